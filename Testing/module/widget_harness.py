"""The module's widget as Slicer creates it, for the tests that drive it: a strict stand-in application, the
widget after ``setup()`` and a fake worker launcher that plays the worker's JSON lines.

A plain module (not ``conftest``) so that test files import its helpers by a name no other folder uses; the
fixtures reach the tests through ``conftest.py``, which imports them.
"""

from __future__ import annotations

import importlib
import json
import types
from pathlib import Path

import pytest
from strict_slicer import StrictObject, slicer_application

__all__ = [
    "MODULE_DIR",
    "FakeLauncher",
    "FakeProcess",
    "import_anomalyscout",
    "module_parent",
    "slicer_app",
    "widget",
]

MODULE_DIR = Path(__file__).resolve().parents[2] / "AnomalyScout"


class FakeProcess:
    pid = 4242


class FakeLauncher:
    """Records the launch and lets the test play the worker: lines, then an exit code."""

    def __call__(self, args, cwd, on_line, on_exit):
        self.args, self.on_line, self.on_exit = list(args), on_line, on_exit
        return FakeProcess()

    def send(self, **message) -> None:
        self.on_line(json.dumps(message) + "\n")


def import_anomalyscout(app):
    """``import AnomalyScout`` as Slicer's scripted-module factory does, registered in ``slicer.modules``."""
    module = importlib.import_module("AnomalyScout")
    app.modules["AnomalyScout"] = module
    return module


def module_parent(entered: bool = True) -> StrictObject:
    """The qSlicerScriptedLoadableModuleWidget Slicer passes as ``parent``."""
    parent = StrictObject("qSlicerAbstractModuleWidget")
    added: list = []
    parent._values.update(layout=lambda: types.SimpleNamespace(addWidget=added.append), isEntered=entered)
    return parent


@pytest.fixture
def slicer_app(scene, tmp_path):
    with slicer_application(scene, tmp_path / "SlicerTemp", MODULE_DIR) as app:
        yield app


@pytest.fixture
def widget(slicer_app, monkeypatch):
    """The module's widget after ``setup()``, with torch and the rest reported installed and a fake worker."""
    module = import_anomalyscout(slicer_app)
    real_plan = module.install_plan
    monkeypatch.setattr(module, "install_plan", lambda: real_plan(find_spec=lambda name: object()))
    launcher = FakeLauncher()
    monkeypatch.setattr(module, "slicer_launcher", launcher)
    kills: list[int] = []
    monkeypatch.setattr("AnomalyScoutModuleLib.worker_run.kill_process_tree", kills.append)
    widget = module.AnomalyScoutWidget(module_parent())
    widget.setup()
    widget.launcher, widget.kills, widget.module = launcher, kills, module
    yield widget
    widget.cleanup()  # as Slicer does when the module is unloaded: no observer outlives the test
