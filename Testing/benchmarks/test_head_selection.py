"""Head selection: a snapshot of a head training run loads as the head it was, and scores as that head."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from AnomalyScoutLib.cli import main
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.model_file import AnomalyModel
from benchmarks.head_comparison import HeadSpec
from benchmarks.head_detector import HeadRun
from benchmarks.head_selection import load_snapshot
from benchmarks.slices import CaseInfo, SliceSet

torch.set_num_threads(1)


class _Reconstructions:
    """What HeadRun reads of a GeneratorRun: the slices, their reconstructions and the model behind them."""

    def __init__(self, slices, model):
        self.slices = slices
        self.reconstructions = type("R", (), {"images": slices.images * 0.5})()
        self.detector = type("D", (), {"model": model, "model_path": "tiny"})()
        self.seconds = 0.0


def test_a_snapshot_is_the_head_of_its_step_and_scores_as_that_head(tiny_model_file, tiny_phantom, tmp_path):
    write_volume(tiny_phantom.volume, tmp_path / "a.nrrd")
    write_volume(tiny_phantom.volume, tmp_path / "b.nrrd")
    out = tmp_path / "with-head.safetensors"
    argv = ["train-head", "--model", str(tiny_model_file), "--data", str(tmp_path), "--out", str(out),
            "--run", str(tmp_path / "run"), "--steps", "2", "--batch", "2", "--validate-every", "1",
            "--channels", "4", "8", "--threads", "1", "--no-progress", "--snapshots"]  # fmt: skip
    assert main(argv) == 0
    model = AnomalyModel.load(out)
    first, header = load_snapshot(tmp_path / "run" / "snapshots" / "step-000001.safetensors", model)
    last, _ = load_snapshot(tmp_path / "run" / "snapshots" / "step-000002.safetensors", model)
    assert header["row"]["step"] == 1 and first.config == model.head.config
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), last.state_dict().values()))

    n, res = 4, model.resolution
    images = np.random.default_rng(0).uniform(-1, 0.5, (n, res, res)).astype(np.float32)
    mask = np.ones(images.shape, dtype=bool)
    slices = SliceSet(images, np.linspace(0.2, 0.8, n).astype(np.float32), mask, ~mask, ~mask,
                      np.zeros(n, np.int64), np.arange(n), (CaseInfo("normal-0", "normal", 0),))  # fmt: skip
    reconstructions = _Reconstructions(slices, model)
    later = HeadRun("last", reconstructions, head=last).method_run().detection.maps
    snapshot = HeadRun("first", reconstructions, head=first).method_run().detection.maps
    with torch.no_grad():
        expected = first.anomaly_map(
            torch.from_numpy(images), torch.from_numpy(images * 0.5), torch.from_numpy(slices.condition),
            torch.from_numpy(mask),
        ).numpy()  # fmt: skip
    np.testing.assert_allclose(snapshot, expected, atol=1e-6)
    assert not np.allclose(later, snapshot)  # each run reads its own head, not the model file's

    # head_comparison names the same heads by NAME=MODEL[:SNAPSHOT]
    snapshot_path = tmp_path / "run" / "snapshots" / "step-000001.safetensors"
    named = HeadSpec(f"early={out}:{snapshot_path}")
    assert named.name == "early" and named.paths() == [out, snapshot_path]
    for a, b in zip(named.load().state_dict().values(), first.state_dict().values()):
        assert torch.equal(a, b)
    own = HeadSpec(f"own={out}").load()
    for a, b in zip(own.state_dict().values(), model.head.state_dict().values()):
        assert torch.equal(a, b)


def test_a_head_is_named_name_equals_model():
    for text in ("models/default.safetensors", "=models/default.safetensors", "name="):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=MODEL"):
            HeadSpec(text)


def test_the_faint_probe_widens_only_the_intensity_ranges_and_restores_them():
    from AnomalyScoutLib.anomaly_map import synthesis
    from benchmarks import head_contrast_probe as probe

    draws = [probe._faint_uniform(torch.Generator().manual_seed(s), 30.0, 200.0) for s in range(400)]
    assert min(draws) >= probe.FAINT_FLOOR_HU and max(draws) <= 200.0 and min(draws) < 20.0
    other = probe._faint_uniform(torch.Generator().manual_seed(0), 0.5, 2.0)
    assert other == synthesis._uniform(torch.Generator().manual_seed(0), 0.5, 2.0)
    with pytest.raises(SystemExit):  # anomalyscout's own parser refuses a missing command
        probe.main(["--faint"])
    assert synthesis._uniform is probe._as_shipped  # restored after the run
    assert probe.main(["train-head"]) == 2


def test_the_local_probe_trains_without_the_large_families_and_restores_them():
    from AnomalyScoutLib.anomaly_map.training import HeadTrainingOptions
    from benchmarks import head_contrast_probe as probe

    options = HeadTrainingOptions()
    shipped = options.training_families
    assert set(probe.LARGE_FAMILIES) <= set(shipped)
    local = probe._local_families(options)
    assert local == tuple(f for f in shipped if f not in probe.LARGE_FAMILIES) and len(local) >= 2
    with pytest.raises(SystemExit):
        probe.main(["--local"])  # no command: anomalyscout's parser exits
    assert HeadTrainingOptions().training_families == shipped  # restored
