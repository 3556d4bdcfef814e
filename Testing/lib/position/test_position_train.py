"""``anomalyscout position-train`` starts as every training command does: ``--device`` and ``--threads``
through ``commands.training_run`` (CUDA, then MPS, then CPU), and trains on the device it chose."""

from __future__ import annotations

import functools

import pytest
import torch

from AnomalyScoutLib.cli import main
from AnomalyScoutLib.commands import training_run
from AnomalyScoutLib.position import training
from AnomalyScoutLib.position.store import load_regressor

#: A run of two steps on two small phantoms: seconds, not the real minutes.
TINY_RUN = ["--phantoms", "1", "--validation-phantoms", "1", "--steps", "2", "--batch", "4"]


@pytest.fixture()
def small_phantoms(monkeypatch):
    """``phantom_volumes`` making 32² phantoms of 12-16 slices (the real function, smaller)."""
    small = functools.partial(training.phantom_volumes, side=32, slices=(12, 16))
    monkeypatch.setattr(training, "phantom_volumes", lambda seeds, rng: small(seeds, rng))


@pytest.fixture()
def seen(monkeypatch) -> dict:
    """What ``training_device`` returned and which device ``train_regressor`` was given (both still run)."""
    record: dict = {}
    choose, train = training_run.training_device, training.train_regressor

    def spy_choose(args):
        record["chosen"] = choose(args)
        return record["chosen"]

    def spy_train(*args, **kwargs):
        record["trained_on"] = kwargs.get("device")
        return train(*args, **kwargs)

    monkeypatch.setattr(training_run, "training_device", spy_choose)
    monkeypatch.setattr(training, "train_regressor", spy_train)
    return record


def test_position_train_trains_on_the_device_and_threads_of_the_shared_training_helper(
    tmp_path, small_phantoms, seen
):
    out = tmp_path / "position.safetensors"
    threads = torch.get_num_threads()
    try:
        argv = ["position-train", "--out", str(out), *TINY_RUN, "--device", "cpu", "--threads", "2"]
        argv += ["--real-run-share", "0.25"]
        assert main(argv) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert seen["chosen"] == torch.device("cpu") and seen["trained_on"] == torch.device("cpu")
    regressor, info = load_regressor(out)
    assert info["training"]["device"] == "cpu" and info["training"]["steps"] == 2
    assert info["training"]["real_run_share"] == 0.25
    assert next(regressor.parameters()).device.type == "cpu"


def test_position_train_picks_cuda_then_mps_then_cpu_by_default(tmp_path, small_phantoms, seen):
    out = tmp_path / "position.safetensors"
    assert main(["position-train", "--out", str(out), *TINY_RUN]) == 0  # --device auto
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert seen["trained_on"].type == expected
    # Trained wherever, the regressor comes back to the CPU, where slices are placed.
    regressor, info = load_regressor(out)
    assert info["training"]["device"].startswith(expected)
    assert next(regressor.parameters()).device.type == "cpu"


def test_position_train_refuses_a_device_it_does_not_have_in_one_line(tmp_path, capsys):
    out = tmp_path / "position.safetensors"
    assert main(["position-train", "--out", str(out), *TINY_RUN, "--device", "cuda:7"]) != 0
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: device 'cuda:7'") and "\n" not in error and "Traceback" not in error
    assert not out.exists()
