"""``anomalyscout train-head``: one command from a model and normal volumes to a model file with a head."""

from __future__ import annotations

import pytest
import torch

from AnomalyScoutLib.cli import main
from AnomalyScoutLib.io.volume import write_volume
from AnomalyScoutLib.model_file import AnomalyModel

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def volumes(tiny_phantom, tmp_path_factory):
    folder = tmp_path_factory.mktemp("normal")
    for i in range(3):
        write_volume(tiny_phantom.volume, folder / f"case_{i}.nrrd")
    return folder


def test_writes_the_model_with_its_head_and_the_run_log(tiny_model_file, volumes, tmp_path):
    out = tmp_path / "with-head.safetensors"
    args = ["train-head", "--model", str(tiny_model_file), "--data", str(volumes), "--out", str(out)]
    args += ["--run", str(tmp_path / "run"), "--steps", "2", "--batch", "2", "--validate-every", "1"]
    args += ["--channels", "4", "8", "--holdout", "warp", "--threads", "1", "--no-progress"]
    assert main(args) == 0
    model = AnomalyModel.load(out)
    assert model.head is not None and model.head.config.channels == (4, 8)
    training = model.metadata["head"]["training"]
    assert training["steps_done"] == 2 and training["options"]["holdout"] == "warp"
    assert model.calibration is None
    assert (tmp_path / "run" / "log.csv").is_file() and (tmp_path / "run" / "head_best.safetensors").is_file()


def test_a_missing_output_folder_is_a_one_line_error_before_any_work(
    tiny_model_file, volumes, tmp_path, capsys
):
    out = tmp_path / "missing" / "m.safetensors"
    code = main(["train-head", "--model", str(tiny_model_file), "--data", str(volumes), "--out", str(out)])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --out: folder {out.parent} does not exist"
    ]


@pytest.mark.parametrize(
    ("flag", "message"),
    [("--snapshots", "--snapshots needs --run"), ("--atlas-input", "holds no position atlas")],
)
def test_options_that_need_something_missing_are_one_line_errors(
    tiny_model_file, volumes, tmp_path, capsys, flag, message
):
    out = tmp_path / "m.safetensors"
    argv = ["train-head", "--model", str(tiny_model_file), "--data", str(volumes), "--out", str(out), flag]
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0] and not out.exists()
