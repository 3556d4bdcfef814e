"""A strict stand-in for the Slicer application around ``AnomalyScout.py``: qt, ctk and slicer.util.

The MRML side is real (slicer-core's ``vtkMRMLScene``, its nodes, ``slicer.util.VTKObservationMixin``), the
GUI side is faked, and every fake object accepts only the names of ``slicer_api.py``, which were read from
Slicer's, CTK's and Qt's sources: reading or setting a name that the real class does not have raises
``AttributeError``, as it would inside Slicer. Behaviour is faked only where the widget depends on it (combo
boxes, tables, buttons' signals, the log area); other allowed members record their calls and return ``None``.

:func:`slicer_application` installs it into ``sys.modules`` and blocks every package Slicer does not bundle,
so importing the module here is importing it as Slicer does at start-up.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys
import types
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer_api as api

__all__ = ["NOT_BUNDLED", "Application", "BlockedImport", "StrictObject", "slicer_application"]

#: Packages that the library needs and Slicer does not bundle (Slicer's SuperBuild/External_python-*.cmake
#: bundle numpy, scipy, SimpleITK, pydicom, requests, packaging and friends, none of these).
NOT_BUNDLED = ("torch", "safetensors", "tqdm", "psutil", "dask", "distributed", "matplotlib")


class BlockedImport(importlib.abc.MetaPathFinder):
    """A meta-path finder that makes the packages Slicer lacks unimportable (ImportError, as in Slicer)."""

    def __init__(self, names: tuple[str, ...] = NOT_BUNDLED) -> None:
        self.names = names
        self.attempts: list[str] = []

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.split(".")[0] in self.names:
            self.attempts.append(fullname)
            raise ImportError(f"No module named {fullname!r} (Slicer does not bundle it)")
        return None


def _allowed(qt_class: str) -> frozenset[str]:
    """Every name of ``qt_class`` and its bases, from ``slicer_api``."""
    names: set[str] = set(api.QT_OBJECT)
    cls: str | None = qt_class
    while cls is not None:
        names |= set(api.QT.get(cls, ())) | set(api.WIDGETS.get(cls, ()))
        cls = api.BASES.get(cls)
    return frozenset(names)


class StrictObject:
    """An object that has exactly the names of a Qt/CTK/Slicer class: anything else is an AttributeError."""

    _qt_class = "QObject"

    def __init__(self, qt_class: str | None = None, allowed: frozenset[str] | None = None) -> None:
        object.__setattr__(self, "_qt_class", qt_class or type(self)._qt_class)
        object.__setattr__(self, "_names", allowed if allowed is not None else _allowed(self._qt_class))
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_slots", {})
        object.__setattr__(self, "calls", [])

    def _check(self, name: str) -> None:
        if name not in self._names:
            raise AttributeError(f"{self._qt_class} has no attribute {name!r} in Slicer (see slicer_api.py)")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self._check(name)
        if name in self._values:
            return self._values[name]

        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args, kwargs))

        return record

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        self._check(name)
        self._values[name] = value

    # PythonQt's QObject.connect(signature, callable), and a test's way to emit a signal
    def connect(self, signal: str, slot: Any) -> None:
        self._check(signal.split("(")[0])
        self._slots.setdefault(signal.split("(")[0], []).append(slot)

    def emit(self, signal: str, *args: Any) -> None:
        for slot in self._slots.get(signal, []):
            slot(*args)


class Widget(StrictObject):
    """A widget of the .ui; ``show``/``hide`` drive ``visible``."""

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def setMRMLScene(self, scene: Any) -> None:  # noqa: N802 - Qt's spelling
        self._check("setMRMLScene")
        self._values["mrmlScene"] = scene


class ComboBox(Widget):
    """QComboBox: ``currentIndexChanged(int)`` is emitted whenever the index changes, by the user or by code
    (``setCurrentIndex``, the first ``addItem``, ``clear``), as Qt documents it."""

    def __init__(self, qt_class: str = "QComboBox") -> None:
        super().__init__(qt_class)
        self._items: list[tuple[str, Any]] = []
        self._index = -1

    def _set_index(self, index: int) -> None:
        if index != self._index:
            self._index = index
            self.emit("currentIndexChanged", index)

    def clear(self) -> None:
        self._items = []
        self._set_index(-1)

    def addItem(self, text: str, data: Any = None) -> None:  # noqa: N802
        self._items.append((text, data))
        if self._index < 0:
            self._set_index(0)

    def findData(self, data: Any) -> int:  # noqa: N802
        return next((i for i, (_, d) in enumerate(self._items) if d == data), -1)

    def setCurrentIndex(self, index: int) -> None:  # noqa: N802
        self._set_index(index)

    @property
    def currentIndex(self) -> int:  # noqa: N802
        return self._index

    @property
    def currentData(self) -> Any:  # noqa: N802
        return self._items[self._index][1] if 0 <= self._index < len(self._items) else None

    def itemText(self, index: int) -> str:  # noqa: N802
        return self._items[index][0]


class SliderWidget(Widget):
    """ctkSliderWidget: ``value`` stays within [``minimum``, ``maximum``] and ``valueChanged(double)`` is
    emitted whenever it changes, also when a new maximum clamps it (CTK's ctkSliderWidget.cpp: ``setMaximum``
    sets the inner slider's maximum, whose clamped value reaches ``setSpinBoxValue``, which emits
    ``valueChanged``). Its rounding to ``decimals`` is not faked."""

    def __init__(self, qt_class: str = "ctkSliderWidget") -> None:
        super().__init__(qt_class)
        self._values.update(minimum=0.0, maximum=99.99, value=0.0)  # QDoubleSpinBox's default range

    def __setattr__(self, name: str, value: Any) -> None:
        before = self._values.get("value")
        super().__setattr__(name, value)
        if name in ("value", "minimum", "maximum"):
            values = self._values
            values["value"] = min(max(float(values["value"]), values["minimum"]), values["maximum"])
            if values["value"] != before:
                self.emit("valueChanged", values["value"])


class TableWidget(Widget):
    def __init__(self, qt_class: str = "QTableWidget") -> None:
        super().__init__(qt_class)
        self._rows: list[dict[int, Any]] = []

    def setRowCount(self, count: int) -> None:  # noqa: N802
        self._rows = [self._rows[i] if i < len(self._rows) else {} for i in range(count)]

    def rowCount(self) -> int:  # noqa: N802
        return len(self._rows)

    def setItem(self, row: int, column: int, item: Any) -> None:  # noqa: N802
        self._rows[row][column] = item

    def item(self, row: int, column: int) -> Any:
        return self._rows[row].get(column)


class PlainTextEdit(Widget):
    def __init__(self, qt_class: str = "QPlainTextEdit") -> None:
        super().__init__(qt_class)
        self._lines: list[str] = []

    def appendPlainText(self, text: str) -> None:  # noqa: N802
        self._lines.append(text)

    def clear(self) -> None:
        self._lines = []

    def toPlainText(self) -> str:  # noqa: N802
        return "\n".join(self._lines)


class SegmentSelector(Widget):
    """qMRMLSegmentSelectorWidget: a segmentation node and one of its segment IDs, set through its slots."""

    def __init__(self, qt_class: str = "qMRMLSegmentSelectorWidget") -> None:
        super().__init__(qt_class)
        self._node, self._segment_id = None, ""

    def currentNode(self) -> Any:  # noqa: N802
        return self._node

    def setCurrentNode(self, node: Any) -> None:  # noqa: N802
        self._node = node

    def currentSegmentID(self) -> str:  # noqa: N802
        return self._segment_id

    def setCurrentSegmentID(self, segment_id: str) -> None:  # noqa: N802
        self._segment_id = segment_id


WIDGET_TYPES = {
    "QComboBox": ComboBox,
    "ctkSliderWidget": SliderWidget,
    "QTableWidget": TableWidget,
    "QPlainTextEdit": PlainTextEdit,
    "qMRMLSegmentSelectorWidget": SegmentSelector,
}


class TableWidgetItem(StrictObject):
    def __init__(self, text: str = "") -> None:
        super().__init__("QTableWidgetItem")
        self.text = text


def load_ui(path: str) -> Widget:
    """``slicer.util.loadUI``: one strict widget per ``<widget>`` of the real .ui file, named as there."""
    root = ET.parse(path).getroot().find("widget")
    top = Widget(root.get("class"))
    top._children = {}
    for element in root.iter("widget"):
        cls = element.get("class")
        widget = WIDGET_TYPES.get(cls, Widget)(cls) if cls in WIDGET_TYPES else Widget(cls)
        for prop in element.findall("property"):
            name, value = prop.get("name"), prop.find("*")
            if prop.get("stdset") == "0" or value is None:
                continue
            text = value.text or ""
            if value.tag in ("bool", "number", "double", "string"):
                widget._check(name)
                parsers = {"bool": lambda t: t == "true", "number": int, "double": float, "string": str}
                widget._values[name] = parsers[value.tag](text)
        top._children[element.get("name")] = widget
    return top


@dataclass
class Application:
    """What a test sees of the stand-in: the scene, the messages shown and the modules faked."""

    scene: Any
    temporary_path: Path
    errors: list[str] = field(default_factory=list)
    confirmations: list[str] = field(default_factory=list)
    confirm: bool = True
    loaded: list[str] = field(default_factory=list)
    blocker: BlockedImport = field(default_factory=BlockedImport)
    sample_sources: list[dict] = field(default_factory=list)
    processes: list[Any] = field(default_factory=list)
    modules: dict[str, types.ModuleType] = field(default_factory=dict)


def _module(name: str, allowed: frozenset[str], **members: Any) -> types.ModuleType:
    """A module object whose attributes are limited to ``allowed`` (undefined allowed ones record calls)."""

    class StrictModule(types.ModuleType):
        def __getattr__(self, attribute: str) -> Any:
            if attribute.startswith("__"):
                raise AttributeError(attribute)
            if attribute not in allowed:
                raise AttributeError(f"module {name!r} has no attribute {attribute!r} in Slicer")
            raise NotImplementedError(
                f"{name}.{attribute} exists in Slicer but this stand-in does not fake it"
            )

    module = StrictModule(name)
    for key, value in members.items():
        assert key in allowed or key.startswith("_"), f"{name}.{key} is not a name of Slicer's {name}"
        setattr(module, key, value)
    return module


def _fake_qt(app: Application) -> types.ModuleType:
    settings: dict[str, Any] = {}

    class QSettings(StrictObject):
        def __init__(self) -> None:
            super().__init__("QSettings")

        def value(self, key: str, default: Any = None) -> Any:
            return settings.get(key, default)

        def setValue(self, key: str, value: Any) -> None:  # noqa: N802
            settings[key] = value

    class QFileDialog:
        answer = ""

        @staticmethod
        def getOpenFileName(*_args: Any) -> str:  # noqa: N802
            return QFileDialog.answer

    class QByteArray(StrictObject):
        """PythonQt's QByteArray: ``data()`` gives the bytes; no buffer protocol, so ``bytes()`` fails."""

        def __init__(self, data: bytes = b"") -> None:
            super().__init__("QByteArray")
            self._data = data

        def data(self) -> bytes:
            return self._data

    class QProcess(StrictObject):
        """Records its start; a test queues output with ``_output`` and emits the signals itself."""

        MergedChannels, NotRunning, Running, NormalExit, CrashExit = 1, 0, 2, 0, 1

        def __init__(self) -> None:
            super().__init__("QProcess")
            self._output: list[bytes] = []
            app.processes.append(self)

        def readAllStandardOutput(self) -> QByteArray:  # noqa: N802
            data, self._output = b"".join(self._output), []
            return QByteArray(data)

        def processId(self) -> int:  # noqa: N802
            return 4321

    class QProcessEnvironment(StrictObject):
        def __init__(self) -> None:
            super().__init__("QProcessEnvironment")

    names = frozenset(
        {"QSettings", "QFileDialog", "QTableWidgetItem", "QProcess", "QProcessEnvironment", "QByteArray"}
        | {"QTimer", "Qt", "QWidget"}
    )
    return _module(
        "qt",
        names,
        QSettings=QSettings,
        QFileDialog=QFileDialog,
        QTableWidgetItem=TableWidgetItem,
        QProcess=QProcess,
        QProcessEnvironment=QProcessEnvironment,
        QByteArray=QByteArray,
        _settings=settings,
    )


@contextlib.contextmanager
def _error_display(app: Application, message: str | None = None, show: bool = True, waitCursor: bool = False):  # noqa: N803
    """``slicer.util.tryWithErrorDisplay``: shows the error, then re-raises it (as Slicer's does)."""
    try:
        yield
    except Exception as error:
        app.errors.append(f"{message}\n\n{error}")
        raise


def _fake_util(app: Application, real_util: types.ModuleType) -> types.ModuleType:
    def loadVolume(path: str, properties: dict | None = None, returnNode: bool = False) -> Any:  # noqa: N802, N803
        from module_helpers import load_volume_node

        app.loaded.append(path)
        name = (properties or {}).get("name", Path(path).name.split(".")[0])
        return load_volume_node(app.scene, Path(path), name)

    def confirmOkCancelDisplay(text: str, windowTitle: str | None = None, **_kwargs: Any) -> bool:  # noqa: N802, N803
        app.confirmations.append(text)
        return app.confirm

    return _module(
        "slicer.util",
        api.SLICER_UTIL,
        VTKObservationMixin=real_util.VTKObservationMixin,
        loadUI=load_ui,
        childWidgetVariables=lambda top: types.SimpleNamespace(**top._children),
        tryWithErrorDisplay=lambda *a, **k: _error_display(app, *a, **k),
        showStatusMessage=lambda message, duration=0: True,
        loadVolume=loadVolume,
        confirmOkCancelDisplay=confirmOkCancelDisplay,
        arrayFromVolume=real_util.arrayFromVolume,
        pip_install=lambda requirements, **kwargs: None,
        WaitCursor=contextlib.nullcontext,
        launchConsoleProcess=real_util.launchConsoleProcess,
        startupEnvironment=lambda: {},
    )


def _fake_scripted_loadable_module(app: Application, slicer: types.ModuleType) -> types.ModuleType:
    names = api.SCRIPTED_LOADABLE_MODULE

    class Strict:
        _api_class = ""

        def __setattr__(self, name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

    class ScriptedLoadableModule:
        def __init__(self, parent: Any) -> None:
            self.parent = parent
            self.moduleName = type(self).__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent: Any = None) -> None:
            self.moduleName = type(self).__name__.removesuffix("Widget")
            self.parent = parent
            self.layout = parent.layout()
            self.developerMode = False

        def resourcePath(self, filename: str) -> str:  # noqa: N802
            return str(Path(app.modules["AnomalyScout"].__file__).parent / "Resources" / filename)

        def setup(self) -> None:
            pass

        def cleanup(self) -> None:
            pass

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent: Any = None) -> None:
            self.moduleName = type(self).__name__.removesuffix("Logic")
            self.isSingletonParameterNode = True

        def getParameterNode(self) -> Any:  # noqa: N802 - as Slicer's: a singleton node per module and scene
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node:
                return node
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            return slicer.mrmlScene.AddNode(node)

    class ScriptedLoadableModuleTest:
        pass

    classes = {
        "ScriptedLoadableModule": ScriptedLoadableModule,
        "ScriptedLoadableModuleWidget": ScriptedLoadableModuleWidget,
        "ScriptedLoadableModuleLogic": ScriptedLoadableModuleLogic,
        "ScriptedLoadableModuleTest": ScriptedLoadableModuleTest,
    }
    for class_name, cls in classes.items():
        for member in vars(cls):
            if not member.startswith("__"):
                assert member in names[class_name], f"{class_name}.{member} is not in Slicer"
    return _module("slicer.ScriptedLoadableModule", frozenset(classes), **classes)


def _fake_parameter_node_wrapper(slicer: types.ModuleType) -> types.ModuleType:
    """``slicer.parameterNodeWrapper``: typed fields over a real vtkMRMLScriptedModuleNode, no GUI binding."""

    def Choice(choices: list) -> tuple:  # noqa: N802
        return ("choice", tuple(choices))

    def WithinRange(low: float, high: float) -> tuple:  # noqa: N802
        return ("range", low, high)

    def parameterNodeWrapper(cls: type) -> type:  # noqa: N802
        fields = dict(getattr(cls, "__annotations__", {}))
        defaults = {name: getattr(cls, name) for name in fields if hasattr(cls, name)}
        allowed = api.PARAMETER_NODE_WRAPPER | set(fields)

        class Wrapper:
            def __init__(self, parameterNode: Any) -> None:  # noqa: N803
                object.__setattr__(self, "parameterNode", parameterNode)
                object.__setattr__(self, "guis", {})

            def __getattr__(self, name: str) -> Any:
                if name not in allowed:
                    raise AttributeError(f"a parameter node wrapper has no {name!r}")
                if name not in fields:
                    raise NotImplementedError(name)
                node = self.parameterNode
                if name not in defaults:  # a node reference
                    return node.GetNodeReference(name)
                text = node.GetParameter(name)
                if not text:
                    return defaults[name]
                default = defaults[name]
                return text == "True" if isinstance(default, bool) else type(default)(text)

            def __setattr__(self, name: str, value: Any) -> None:
                if name not in fields:
                    raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
                if name not in defaults:
                    self.parameterNode.SetNodeReferenceID(name, value.GetID() if value else None)
                else:
                    self.parameterNode.SetParameter(name, str(value))

            def connectGui(self, gui: Any) -> int:  # noqa: N802
                tag = len(self.guis) + 1
                self.guis[tag] = gui
                return tag

            def disconnectGui(self, tag: Any) -> None:  # noqa: N802
                self.guis.pop(tag, None)

            def AddObserver(self, event: Any, callback: Any, priority: float = 0.0) -> int:  # noqa: N802
                return self.parameterNode.AddObserver(event, callback, priority)

            def RemoveObserver(self, tag: int) -> None:  # noqa: N802
                self.parameterNode.RemoveObserver(tag)

        Wrapper.__name__ = cls.__name__
        return Wrapper

    return _module(
        "slicer.parameterNodeWrapper",
        frozenset({"Choice", "WithinRange", "parameterNodeWrapper"}),
        Choice=Choice,
        WithinRange=WithinRange,
        parameterNodeWrapper=parameterNodeWrapper,
    )


class _LayoutManager(StrictObject):
    def __init__(self) -> None:
        super().__init__("qMRMLLayoutManager")
        self._view = StrictObject("qMRMLPlotView")
        self._plot = StrictObject("qMRMLPlotWidget")
        self._plot._values["plotView"] = lambda: self._view

    def plotWidget(self, index: int) -> Any:  # noqa: N802
        return self._plot


@contextlib.contextmanager
def slicer_application(scene: Any, temporary_path: Path, module_dir: Path) -> Iterator[Application]:
    """Install the stand-in (and the import blocker), yield it, then restore ``sys.modules`` as it was."""
    import slicer
    import slicer.util as real_util

    app = Application(scene, temporary_path)
    saved = dict(sys.modules)
    saved_attributes = {
        name: getattr(slicer, name)
        for name in ("util", "mrmlScene", "app", "modules")
        if hasattr(slicer, name)
    }
    for name in list(sys.modules):
        if name.split(".")[0] in (*NOT_BUNDLED, "AnomalyScout", "AnomalyScoutModuleLib", "AnomalyScoutLib"):
            del sys.modules[name]
    sys.meta_path.insert(0, app.blocker)
    path_before = list(sys.path)
    sys.path.insert(0, str(module_dir))

    application = StrictObject("qSlicerApplication", api.SLICER_APP)
    application._values.update(
        temporaryPath=str(temporary_path),
        testingEnabled=lambda: False,
        layoutManager=_LayoutManager,
    )
    layout = _LayoutManager()
    application._values["layoutManager"] = lambda: layout
    plots_logic = types.SimpleNamespace(shown=[])
    plots_logic.ShowChartInLayout = plots_logic.shown.append
    util = _fake_util(app, real_util)
    sample_data = types.ModuleType("SampleData")

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(**kwargs: Any) -> None:  # noqa: N802
            unknown = set(kwargs) - api.SAMPLE_DATA_SOURCE_ARGUMENTS
            assert not unknown, f"registerCustomSampleDataSource has no argument {unknown}"
            app.sample_sources.append(kwargs)

    sample_data.SampleDataLogic = SampleDataLogic
    try:
        sys.modules.update(
            {
                "qt": _fake_qt(app),
                "ctk": _module("ctk", frozenset({"ctkCollapsibleButton", "ctkMessageBox"})),
                "slicer.util": util,
                "slicer.ScriptedLoadableModule": _fake_scripted_loadable_module(app, slicer),
                "slicer.parameterNodeWrapper": _fake_parameter_node_wrapper(slicer),
                "SampleData": sample_data,
            }
        )
        slicer.util, slicer.mrmlScene, slicer.app = util, scene, application
        slicer.modules = types.SimpleNamespace(plots=types.SimpleNamespace(logic=lambda: plots_logic))
        app.layout, app.plots_logic = layout, plots_logic
        yield app
    finally:
        sys.meta_path.remove(app.blocker)
        sys.path[:] = path_before
        for name in list(sys.modules):
            if name not in saved:
                del sys.modules[name]
        sys.modules.update(saved)
        for name in ("util", "mrmlScene", "app", "modules"):
            if name in saved_attributes:
                setattr(slicer, name, saved_attributes[name])
            elif hasattr(slicer, name):
                delattr(slicer, name)
