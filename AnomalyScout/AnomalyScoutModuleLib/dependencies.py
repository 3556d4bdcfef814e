"""What the library needs inside Slicer, and installing it after one confirmation.

Slicer's Python ships numpy, SimpleITK and friends but not torch or safetensors. torch must come from the
PyTorch extension's ``PyTorchUtils`` (it picks the CUDA build matching the computer's driver); a plain ``pip
install torch`` would bring a wrong build, so this module never asks pip for torch. All is listed in one
question so that the user confirms once. No qt: the dialog is the widget's business.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from AnomalyScoutLib.errors import AnomalyScoutError

__all__ = ["REQUIREMENTS", "TORCH_REQUIREMENT", "InstallError", "InstallPlan", "install", "install_plan"]

#: pip requirement -> the module it provides: ``pyproject.toml``'s dependencies except torch (a test checks).
REQUIREMENTS: dict[str, str] = {
    "numpy>=1.24": "numpy",
    "SimpleITK>=2.3": "SimpleITK",
    "safetensors>=0.4": "safetensors",
    "scipy>=1.10": "scipy",
    "tqdm>=4.60": "tqdm",
    "matplotlib>=3.7": "matplotlib",
    "psutil>=5.9": "psutil",
}
TORCH_REQUIREMENT = ">=2.1"


class InstallError(AnomalyScoutError):
    """Installing a dependency failed or was declined; the module cannot run until it is installed."""


@dataclass(frozen=True)
class InstallPlan:
    """What is missing: torch (through the PyTorch extension) and pip packages."""

    torch: bool
    packages: tuple[str, ...]

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


def install_plan(find_spec: Callable[[str], Any] = importlib.util.find_spec) -> InstallPlan:
    """Look up which requirements are missing, without importing them (importing torch takes seconds)."""
    packages = tuple(requirement for requirement, module in REQUIREMENTS.items() if find_spec(module) is None)
    return InstallPlan(torch=find_spec("torch") is None, packages=packages)


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
