"""What the library needs inside Slicer, and installing it after one confirmation.

Slicer's Python ships numpy, SimpleITK and friends but not torch or safetensors. torch must come from the
PyTorch extension's ``PyTorchUtils`` (it picks the CUDA build matching the computer's driver); a plain ``pip
install torch`` would bring a wrong build, so this module never asks pip for torch. All is listed in one
question so that the user confirms once. A torch that is installed but too old is reported before anything
is asked: the PyTorch extension's installer does not replace it, the PyTorch Utils module does (as
SlicerTotalSegmentator advises). No qt: the dialog is the widget's business.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from AnomalyScoutLib.errors import AnomalyScoutError

__all__ = ["REQUIREMENTS", "TORCH_REQUIREMENT", "InstallError", "InstallPlan", "install", "install_plan"]

#: pip requirement -> the module it provides: ``pyproject.toml``'s dependencies except torch (a test checks).
#: Ranges, not bare minimums: a major version we never ran is refused as surely as a missing package (the
#: versions tested are in docs/slicer_module.md).
REQUIREMENTS: dict[str, str] = {
    "numpy>=1.24,<3": "numpy",
    "SimpleITK>=2.3,<3": "SimpleITK",
    "safetensors>=0.4,<1": "safetensors",
    "scipy>=1.10,<2": "scipy",
    "tqdm>=4.60,<5": "tqdm",
    "matplotlib>=3.7,<4": "matplotlib",
    "psutil>=5.9,<8": "psutil",
}
TORCH_REQUIREMENT = ">=2.1,<3"


class InstallError(AnomalyScoutError):
    """Installing a dependency failed or was declined; the module cannot run until it is installed."""


@dataclass(frozen=True)
class InstallPlan:
    """What is missing: torch (through the PyTorch extension) and pip packages.

    ``old_torch`` is the installed torch's version when it does not satisfy :data:`TORCH_REQUIREMENT`.
    """

    torch: bool
    packages: tuple[str, ...]
    old_torch: str | None = None

    def check(self) -> None:
        """Refuse early what an install cannot fix.

        Raises:
            InstallError: torch is installed but outside :data:`TORCH_REQUIREMENT`.
        """
        if self.old_torch is not None:
            raise InstallError(
                f"PyTorch {self.old_torch} is installed but AnomalyScout needs torch{TORCH_REQUIREMENT}: "
                f"install one in that range in the PyTorch Utils module (requirement {TORCH_REQUIREMENT}), "
                "then restart Slicer"
            )

    @property
    def empty(self) -> bool:
        return not self.torch and not self.packages

    def describe(self) -> str:
        """The text of the one confirmation: every item that will be installed, and from where."""
        lines = ["AnomalyScout needs these Python packages, which are not installed yet:"]
        if self.torch:
            lines.append(
                f"  - PyTorch {TORCH_REQUIREMENT} (installed by the PyTorch extension for this computer)"
            )
        lines += [f"  - {package} (from PyPI)" for package in self.packages]
        lines.append("Install them now? This can take a few minutes.")
        return "\n".join(lines)


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def install_plan(
    find_spec: Callable[[str], Any] = importlib.util.find_spec,
    version_of: Callable[[str], str | None] = _installed_version,
) -> InstallPlan:
    """Look up which requirements are missing, without importing them (importing torch takes seconds).

    Args:
        find_spec: whether a module is importable (``importlib.util.find_spec``).
        version_of: an installed distribution's version from its metadata, ``None`` if unknown.
    """
    packages = tuple(
        requirement
        for requirement, module in REQUIREMENTS.items()
        if find_spec(module) is None
        or _outside(requirement, version_of(_distribution(requirement))) is not None
    )
    missing_torch = find_spec("torch") is None
    return InstallPlan(
        torch=missing_torch,
        packages=packages,
        old_torch=None if missing_torch else _outside(f"torch{TORCH_REQUIREMENT}", version_of("torch")),
    )


def _distribution(requirement: str) -> str:
    """The distribution a pip requirement names (``"numpy>=1.24,<3"``: ``"numpy"``)."""
    from packaging.requirements import Requirement

    return Requirement(requirement).name


def _outside(requirement: str, version: str | None) -> str | None:
    """``version`` if it fails ``requirement`` (pip syntax); an unknown or unreadable version passes.

    A package outside its range goes into the plan: pip installs the requirement as written, which moves it
    into the range.
    """
    from packaging.requirements import Requirement  # Slicer bundles packaging (PythonQt's requirements)
    from packaging.version import InvalidVersion, Version

    if version is None:
        return None
    try:
        ok = Requirement(requirement).specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return None
    return None if ok else version


def install(plan: InstallPlan, torch_utils: Any, pip_install: Callable[[Sequence[str]], None]) -> None:
    """Install what ``plan`` lists; the user has already confirmed ``plan.describe()``.

    Args:
        plan: from :func:`install_plan`.
        torch_utils: ``PyTorchUtils.PyTorchUtilsLogic()`` (asked without a second confirmation).
        pip_install: ``slicer.util.pip_install``.

    Raises:
        InstallError: the PyTorch extension is missing or could not install torch.
    """
    if plan.torch:
        if torch_utils is None:
            raise InstallError(
                "the PyTorch extension is not installed: install it with the Extensions Manager"
            )
        if torch_utils.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
            raise InstallError("PyTorch could not be installed; the PyTorch Utils module shows why")
    if plan.packages:
        pip_install(list(plan.packages))
