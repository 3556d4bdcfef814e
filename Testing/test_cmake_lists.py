"""The extension's CMake files ship everything the module needs.

Decision: the module's CMakeLists lists its own scripts and resources explicitly (Slicer's macro wants a
list); the library and the shipped models are copied into the build tree as whole directories with file
patterns (``CopyLibrary.cmake``: a new library file needs no CMake edit), from where Slicer's macro installs
them with the module; the models go under the module's ``Resources/Models``, never into a top-level
``models`` folder on ``sys.path``. So the checks are: every module file is listed and every listed file
exists; every library and model file matches a copy pattern. Then, where cmake is installed, the real
CMake files are configured, built and installed against a stand-in for Slicer's macros, and the installed and
build trees are checked file by file (the build tree gets the library at build time, not at configure time,
so edits do not go stale).
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "AnomalyScout"
TOP = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
MODULE = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
COPY_SCRIPT = (MODULE_DIR / "CopyLibrary.cmake").read_text(encoding="utf-8")
SCRIPTED_MODULES = "lib/Slicer/qt-scripted-modules"


def _cmake_list(name: str) -> list[str]:
    """The items of ``set(name ...)`` in the module CMakeLists, with ``${MODULE_NAME}`` expanded."""
    body = re.search(rf"set\({name}\s+(.*?)\)", MODULE, re.S).group(1)
    return [item.replace("${MODULE_NAME}", "AnomalyScout") for item in body.split()]


def _copy_patterns(directory: str) -> tuple[list[str], list[str]]:
    """(included, excluded) patterns of CopyLibrary.cmake's ``file(COPY ...)`` rule for ``directory``."""
    rule = re.search(rf"file\(COPY \$\{{{directory}\}}/?(.*?)\n  \)", COPY_SCRIPT, re.S).group(1)
    excluded = re.findall(r'PATTERN "([^"]+)" EXCLUDE', rule)
    included = [p for p in re.findall(r'PATTERN "([^"]+)"', rule) if p not in excluded]
    return included, excluded


def _shipped_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def _module_scripts() -> list[str]:
    return sorted(
        p.relative_to(MODULE_DIR).as_posix() for p in _shipped_files(MODULE_DIR) if p.suffix == ".py"
    )


def test_every_module_script_is_listed_and_every_listed_file_exists():
    scripts = _cmake_list("MODULE_PYTHON_SCRIPTS")
    assert sorted(scripts) == _module_scripts()
    for item in scripts + _cmake_list("MODULE_PYTHON_RESOURCES"):
        assert (MODULE_DIR / item).is_file(), item


def test_every_resource_file_is_listed():
    resources = {p.relative_to(MODULE_DIR).as_posix() for p in _shipped_files(MODULE_DIR / "Resources")}
    assert resources == set(_cmake_list("MODULE_PYTHON_RESOURCES"))


@pytest.mark.parametrize(
    ("variable", "folder"), [("LIBRARY_DIR", "AnomalyScoutLib"), ("MODELS_DIR", "models")]
)
def test_the_library_and_the_models_are_copied_whole_and_match_the_patterns(variable, folder):
    assert re.search(rf"-D{variable}=\$\{{CMAKE_CURRENT_SOURCE_DIR\}}/\.\./{folder}\n", MODULE)
    included, _ = _copy_patterns(variable)
    unshipped = [
        p.relative_to(REPO).as_posix()
        for p in _shipped_files(REPO / folder)
        if not any(fnmatch.fnmatch(p.name, pattern) for pattern in included)
    ]
    assert unshipped == []


def test_the_module_builds_with_generic_tests_and_its_heavy_self_test_is_opt_in():
    assert re.search(r"slicerMacroBuildScriptedModule\(.*WITH_GENERIC_TESTS.*?\)", MODULE, re.S)
    assert re.search(
        r"if\(BUILD_TESTING AND \$\{MODULE_NAME\}_ENABLE_SELF_TEST\)\s*"
        r"slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)",
        MODULE,
    )


def test_the_extension_declares_its_metadata_and_depends_on_pytorch():
    for variable in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{variable} "[^"]+"\)', TOP), variable
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in TOP
    for line in (
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(AnomalyScout)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ):
        assert line in TOP


def test_icon_and_screenshot_urls_point_at_files_of_this_repository():
    for variable in ("ICONURL", "SCREENSHOTURLS"):
        url = re.search(rf'set\(EXTENSION_{variable} "([^"]+)"\)', TOP).group(1)
        assert (REPO / url.split("/main/", 1)[1]).is_file(), url


#: Stand-ins for Slicer's CMake: the macros check and install what they are given, as Slicer's do.
FAKE_SLICER = """
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake)
"""
FAKE_USE_SLICER = f"""
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR {SCRIPTED_MODULES})
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR {SCRIPTED_MODULES})
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${{ARGN}})
  foreach(file ${{MY_SCRIPTS}} ${{MY_RESOURCES}})
    if(NOT EXISTS ${{CMAKE_CURRENT_SOURCE_DIR}}/${{file}})
      message(FATAL_ERROR "listed but missing: ${{file}}")
    endif()
    get_filename_component(folder ${{file}} DIRECTORY)
    install(FILES ${{file}} DESTINATION ${{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}}/${{folder}})
  endforeach()
  # as CTK's ctkMacroCompilePythonScript: the whole build-tree scripted-modules folder is installed
  install(DIRECTORY ${{CMAKE_BINARY_DIR}}/${{Slicer_QTSCRIPTEDMODULES_LIB_DIR}}/
    DESTINATION ${{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}})
  set(line "module ${{MY_NAME}} generic=${{MY_WITH_GENERIC_TESTS}}")
  file(APPEND ${{CMAKE_BINARY_DIR}}/registered.txt "${{line}}\\n")
endfunction()
function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "" ${{ARGN}})
  file(APPEND ${{CMAKE_BINARY_DIR}}/registered.txt "unittest ${{MY_SCRIPT}}\\n")
endfunction()
"""


@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("cmake", "cc", "c++")),
    reason="needs cmake and a C/C++ compiler (project() looks for one, as Slicer's build does)",
)
def test_configuring_building_and_installing_put_module_library_and_models_in_place(tmp_path):
    fake = tmp_path / "slicer"
    fake.mkdir()
    (fake / "SlicerConfig.cmake").write_text(FAKE_SLICER)
    (fake / "UseSlicer.cmake").write_text(FAKE_USE_SLICER)
    (fake / "Nothing.cmake").write_text("")
    build, prefix = tmp_path / "build", tmp_path / "install"
    configure = [
        "cmake", "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={fake}", "-DBUILD_TESTING=ON",
        "-DAnomalyScout_ENABLE_SELF_TEST=ON",
        "-DCMAKE_C_COMPILER_WORKS=1", "-DCMAKE_CXX_COMPILER_WORKS=1",
    ]  # fmt: skip
    subprocess.run(configure, check=True, capture_output=True)
    built = build / SCRIPTED_MODULES
    assert not (built / "AnomalyScoutLib").exists(), "the library is copied at configure time: edits go stale"
    subprocess.run(["cmake", "--build", str(build), "--target", "AnomalyScoutCopyLibrary"], check=True)
    subprocess.run(
        ["cmake", "--install", str(build), "--prefix", str(prefix)], check=True, capture_output=True
    )

    installed = prefix / SCRIPTED_MODULES
    expected = [p.relative_to(REPO) for p in _shipped_files(REPO / "AnomalyScoutLib") if p.suffix == ".py"]
    expected += [Path(p) for p in _module_scripts()]
    expected += [Path(r) for r in _cmake_list("MODULE_PYTHON_RESOURCES")]
    expected += [Path("Resources/Models") / p.name for p in (REPO / "models").glob("*.safetensors")]
    assert [str(p) for p in expected if not (installed / p).is_file()] == []
    assert not (installed / "models").exists(), "a top-level models folder on sys.path"
    assert (build / "registered.txt").read_text().split("\n")[:2] == [
        "module AnomalyScout generic=TRUE",
        "unittest AnomalyScout.py",
    ]
    # the build tree has the same layout, for Slicer started from the build folder
    assert (built / "AnomalyScoutLib" / "worker" / "protocol.py").is_file()
    models = [p.name for p in (REPO / "models").glob("*.safetensors")]
    assert models and all((built / "Resources" / "Models" / name).is_file() for name in models)
