"""``--position`` of the benchmarks outside the tracks (model selection, speed, reconstruction error): the
same option as ``anomalyscout score`` (default ``auto``), and it reaches the placement and the range gate.

Nothing long runs: phantom cases are the session's tiny phantom, and the reconstructions are skipped or made
by a tiny model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from AnomalyScoutLib.position import placement
from AnomalyScoutLib.position.network import PositionRegressor, RegressorConfig
from AnomalyScoutLib.position.store import attach_position, save_regressor
from benchmarks import data, generator_runs, model_selection, reconstruction_error, speed
from benchmarks.data import BY_INDEX, LIVER_LABEL, SlicePlacer, volume_slices
from benchmarks.slices import CaseInfo

torch.set_num_threads(1)
TINY = ArchitectureConfig(32, (16, 16, 8, 8), z_dim=16, w_dim=16, mapping_layers=2, position_frequencies=2)
N = 24
#: The regressor's estimates: the fit puts the last 4 of the 24 slices above the model's range.
ABOVE = (np.arange(N) + 0.5) / N * 1.6 - 0.2


@pytest.fixture(autouse=True)
def own_work_dir(tmp_path, monkeypatch):
    """Caches go to the test's folder, never to ``benchmarks/work`` (shared with real runs)."""
    for module in (data, generator_runs):
        monkeypatch.setattr(module, "WORK_DIR", tmp_path / "work")


class _Stop(Exception):
    """Ends a benchmark's ``main`` once its slices are made."""


@pytest.fixture()
def model_file(tmp_path, monkeypatch):
    """A tiny model file holding a (tiny) body-part regressor that sees :data:`ABOVE` in every scan."""
    monkeypatch.setattr(placement, "estimate_slices", lambda *args: ABOVE)
    torch.manual_seed(0)
    plain = AnomalyModel.create(TINY, seed=0).save(tmp_path / "plain.safetensors")
    regressor = PositionRegressor(RegressorConfig(resolution=16, channels=(4, 8))).eval()
    saved = save_regressor(tmp_path / "position.safetensors", regressor, {"training": {}})
    attach_position(plain, saved, tmp_path / "model.safetensors")
    return tmp_path / "model.safetensors"


@pytest.fixture()
def placed(tiny_phantom, monkeypatch) -> list[str]:
    """Every benchmark's ``phantom_case`` made from the tiny phantom (a one-pixel anomaly on slices 5 and
    22 of an anomalous case) by the placer it was given; returns the placements asked for, in order."""
    seen: list[str] = []
    sx, sy, sz = tiny_phantom.volume.spacing_xyz

    def phantom_case(seed, anomaly, resolution, window, shape_xyz=None, placer=BY_INDEX):
        seen.append(placer.method)
        truth = np.zeros(tiny_phantom.volume.array_zyx.shape, dtype=bool)
        if anomaly != "normal":
            truth[[5, 22], 32, 32] = True
        return volume_slices(
            tiny_phantom.volume.array_zyx, (sz, sy, sx), truth, tiny_phantom.labels == LIVER_LABEL,
            CaseInfo(f"{anomaly}-{seed}", anomaly, seed), resolution, window, placer,
        )  # fmt: skip

    for module in (model_selection, speed, reconstruction_error):
        monkeypatch.setattr(module, "phantom_case", phantom_case)
    return seen


#: Every 2nd slice of 7 cases (12 each); by anatomy slices 20 and 22 of each lie above the range.
@pytest.mark.parametrize(
    ("option", "method", "excluded"), [([], "anatomy", 14), (["--position", "index"], "index", 0)]
)
def test_model_selection_places_and_gates_the_validation_slices_as_asked(
    tmp_path, model_file, placed, monkeypatch, option, method, excluded
):
    monkeypatch.setattr(
        model_selection,
        "_candidate",
        lambda path, slices, *rest: (
            {"path": str(path), "slices": len(slices)}
            | {mode: {"mean_type_auroc": 0.5} for mode in ("fast", "accurate")}
        ),
    )
    out = tmp_path / "selection.json"
    assert model_selection.main(["--models", str(model_file), "--out", str(out), *option]) == 0
    assert set(placed) == {method} and len(placed) == 7  # 5 anomaly types and 2 controls
    validation = json.loads(out.read_text())["validation"]
    assert validation["position"]["placement"] == method
    assert validation["position"]["range_gate"]["excluded"] == excluded
    assert validation["slices"] == 7 * 12 - excluded


@pytest.mark.parametrize(("option", "method", "gate_line", "drawn"), [
    ([], "anatomy", "4 of 24 evaluation cases' slices out of the model's range (4 above; 1 anomalous)",
     "evaluation set: 2 slices, 1 anomalous"),
    (["--position", "index"], "index", "all 24 evaluation cases' slices in the model's range",
     "evaluation set: 4 slices, 2 anomalous"),
])  # fmt: skip
def test_speed_places_and_gates_its_evaluation_slices_as_asked(
    model_file, placed, monkeypatch, capsys, option, method, gate_line, drawn
):
    monkeypatch.setattr(speed, "GeneratorDetector", lambda *args, **kwargs: (_ for _ in ()).throw(_Stop()))
    with pytest.raises(_Stop):
        speed.main(["--model", str(model_file), "--cases", "1", "--per-case", "4", *option])
    assert set(placed) == {method}
    printed = capsys.readouterr().out
    assert gate_line in printed
    # Anomalous slices 5 and 22 and their twins; by anatomy slice 22 lies above the range and is never drawn.
    assert drawn in printed


def test_speed_passes_the_option_to_the_end_to_end_run_only_when_it_is_not_the_default(tmp_path, monkeypatch):
    commands = []

    def score_once(command, out, code):
        commands.append(command)
        ran = "fp32" if "--precision" in command else "bf16"  # what scores.json would say
        return {"wall_s": 1.0, "cpu_s": 1.0, "peak_rss": 1, "timings": {}, "precision": ran}

    monkeypatch.setattr(speed, "_score_once", score_once)
    speed.measure_end_to_end(tmp_path / "m.safetensors", (8, 8, 2), 1, position="index")
    default = speed.measure_end_to_end(tmp_path / "m.safetensors", (8, 8, 2), 1)
    exact = speed.measure_end_to_end(tmp_path / "m.safetensors", (8, 8, 2), 1, precision="fp32")
    assert commands[0][-2:] == ["--position", "index"] and "--position" not in commands[1]
    # --precision likewise, and the row records what the run says it ran in
    assert "--precision" not in commands[1] and commands[2][-2:] == ["--precision", "fp32"]
    assert (default["precision"], exact["precision"]) == ("bf16", "fp32")


@pytest.mark.parametrize(
    ("option", "method", "excluded"), [([], "anatomy", 24), (["--position", "index"], "index", 0)]
)
def test_reconstruction_error_places_and_gates_each_models_slices_as_asked(
    tmp_path, model_file, placed, option, method, excluded
):
    out = tmp_path / "errors.json"
    argv = [
        "--models",
        str(model_file),
        "--modes",
        "fast",
        "--normals",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert reconstruction_error.main([*argv, *option]) == 0
    assert set(placed) == {method} and len(placed) == 6
    (row,) = json.loads(out.read_text())["rows"]
    assert row["position"] == method and row["range_gate"]["excluded"] == excluded  # 4 of 24 in 6 cases
    assert row["range_gate"]["excluded_anomalous"] == (5 if excluded else 0)  # slice 22 of the 5 anomalous


def test_the_default_is_what_score_uses_for_the_model(tmp_path, model_file, placed):
    model = AnomalyModel.load(model_file)
    assert SlicePlacer.for_model(model).method == "anatomy"  # auto: the model holds a regressor
    assert SlicePlacer.for_model(AnomalyModel.create(TINY, seed=0)).method == "index"
    with pytest.raises(SystemExit, match="--position anatomy: this model file has no position regressor"):
        plain = str(model_file.parent / "plain.safetensors")
        model_selection.main(["--models", plain, "--position", "anatomy", "--out", str(tmp_path / "x.json")])
