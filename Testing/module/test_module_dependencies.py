"""Dependencies in Slicer: one confirmation, torch only through the PyTorch extension, pyproject in sync."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from AnomalyScoutModuleLib.dependencies import REQUIREMENTS, InstallError, InstallPlan, install, install_plan

REPO = Path(__file__).resolve().parents[2]


class FakeTorchUtils:
    def __init__(self, succeeds: bool = True) -> None:
        self.calls: list[dict] = []
        self.succeeds = succeeds

    def installTorch(self, **kwargs):  # noqa: N802 - PyTorchUtils' own spelling
        self.calls.append(kwargs)
        return object() if self.succeeds else None


def test_requirements_are_the_librarys_dependencies_except_torch():
    tomllib = pytest.importorskip("tomllib")
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(REQUIREMENTS) == sorted(d for d in dependencies if not d.startswith("torch"))


def test_plan_lists_exactly_the_missing_modules():
    missing = {"torch", "safetensors"}
    plan = install_plan(lambda name: None if name in missing else object())
    assert plan.torch and plan.packages == ("safetensors>=0.4,<1",)
    assert "PyTorch" in plan.describe() and "safetensors>=0.4,<1" in plan.describe()
    assert install_plan(lambda name: object()).empty


def test_torch_comes_from_the_pytorch_extension_never_from_pip():
    torch_utils, pip_calls = FakeTorchUtils(), []
    install(InstallPlan(torch=True, packages=("tqdm>=4.60",)), torch_utils, pip_calls.append)
    assert torch_utils.calls == [{"askConfirmation": False, "torchVersionRequirement": ">=2.1,<3"}]
    assert pip_calls == [["tqdm>=4.60"]]


@pytest.mark.parametrize("torch_utils", [None, FakeTorchUtils(succeeds=False)])
def test_a_missing_extension_or_a_failed_torch_install_is_an_install_error(torch_utils):
    pip_calls = []
    with pytest.raises(InstallError, match="PyTorch"):
        install(InstallPlan(torch=True, packages=("tqdm>=4.60",)), torch_utils, pip_calls.append)
    assert pip_calls == []


@pytest.mark.parametrize(
    ("version", "old"), [("1.13.1", True), ("2.0.1+cu118", True), ("2.3.0+cu121", False), ("3.0.0", True)]
)
def test_an_installed_torch_older_than_required_is_refused_before_anything_is_asked(version, old):
    plan = install_plan(lambda name: object(), lambda distribution: version)
    assert (plan.old_torch == version) is old
    if old:
        with pytest.raises(InstallError, match=rf"PyTorch {re.escape(version)} is installed.*PyTorch Utils"):
            plan.check()
    else:
        plan.check()


def test_a_missing_torch_is_not_called_old():
    plan = install_plan(lambda name: None if name == "torch" else object(), lambda distribution: "1.0")
    assert plan.torch and plan.old_torch is None


@pytest.mark.parametrize(
    ("numpy_version", "planned"), [("1.26.4", False), ("2.4.6", False), ("1.21.0", True), ("3.0.0", True)]
)
def test_an_installed_package_outside_its_tested_range_is_planned_for_install(numpy_version, planned):
    def version_of(distribution):
        return numpy_version if distribution == "numpy" else {"torch": "2.13.0"}.get(distribution)

    plan = install_plan(lambda name: object(), version_of)
    assert ("numpy>=1.24,<3" in plan.packages) is planned
    assert all(
        not package.startswith(("scipy", "tqdm")) for package in plan.packages
    )  # unknown: no reinstall
