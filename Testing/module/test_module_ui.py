"""The Qt side, checked without Qt: the .ui parses and matches what AnomalyScout.py uses.

AnomalyScout.py imports qt and the Slicer application, so it is read as source here (ast), never imported.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "AnomalyScout"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "AnomalyScout.ui"
SOURCE = (MODULE_DIR / "AnomalyScout.py").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def ui() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def _widgets(ui: ET.Element) -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ui.iter("widget")}


def _parameter_fields() -> dict[str, ast.expr]:
    tree = ast.parse(SOURCE)
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AnomalyScoutParameterNode"]
    return {s.target.id: s.annotation for s in cls.body if isinstance(s, ast.AnnAssign)}


def test_the_module_source_is_valid_python():
    ast.parse(SOURCE)


def test_every_widget_the_code_uses_exists_in_the_ui(ui):
    used = set(re.findall(r"self\.ui\.(\w+)", SOURCE))
    assert used, "the widget uses no ui names: the regular expression is stale"
    assert sorted(used - set(_widgets(ui))) == []


def test_every_parameter_bound_in_the_ui_is_a_field_of_the_parameter_node_and_back(ui):
    bound = {
        prop.findtext("string"): widget.get("name")
        for widget in ui.iter("widget")
        for prop in widget.findall("property")
        if prop.get("name") == "SlicerParameterName"
    }
    assert set(bound) == set(_parameter_fields())


@pytest.mark.parametrize("field", ["device", "mode"])
def test_combo_box_items_are_the_parameter_choices(ui, field):
    annotation = ast.unparse(_parameter_fields()[field])
    choices = re.search(r"Choice\((\[.*?\])\)", annotation).group(1)
    (widget,) = [
        w for w in ui.iter("widget") if any(p.findtext("string") == field for p in w.findall("property"))
    ]
    items = [item.findtext("property/string") for item in widget.findall("item")]
    assert items == ast.literal_eval(choices)


def test_every_custom_widget_class_is_declared(ui):
    standard = {"QLabel", "QComboBox", "QPushButton", "QProgressBar", "QCheckBox", "QTableWidget", "QWidget"}
    standard.add("QPlainTextEdit")  # the log area
    declared = {c.findtext("class") for c in ui.iter("customwidget")}
    used = {w.get("class") for w in ui.iter("widget")}
    assert sorted(used - standard - declared) == []


def test_the_ui_file_is_the_one_the_widget_loads():
    assert 'resourcePath("UI/AnomalyScout.ui")' in SOURCE
