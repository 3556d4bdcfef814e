"""``--position-regressor`` on ``train-gan``, ``train-encoder`` and ``train-head``: it reaches the slice
loader, the GAN run and the model file record it, and the next stage places alike by default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from AnomalyScoutLib.cli import main
from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.train.placement import load_placement

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "position.safetensors"
COMMON = ["--device", "cpu", "--threads", "1", "--no-progress"]


def _train_gan(volume_folder: Path, config: Path, run: Path, *extra: str) -> int:
    args = ["train-gan", "--data", str(volume_folder), "--res", "16", "--config", str(config)]
    return main([*args, "--out", str(run), "--kimg", "0.008", "--batch", "8", *extra, *COMMON])


def test_the_gan_records_the_placement_and_the_encoder_and_head_follow_it(
    tmp_path, volume_folder, tiny_config_file, capsys
):
    run = tmp_path / "gan"
    assert _train_gan(volume_folder, tiny_config_file, run, "--position-regressor", str(SHIPPED)) == 0
    shipped = load_placement(SHIPPED)
    options = json.loads((run / "training_options.json").read_text())
    assert options["placement"] == shipped.record() and options["placement"]["method"] == "anatomy"
    assert "out_of_range_slices" in options["data"]  # the loader was given the regressor
    assert "slices placed by anatomy" in capsys.readouterr().err

    model_path = tmp_path / "model.safetensors"
    args = ["train-encoder", "--gan", str(run), "--out", str(model_path), "--kimg", "0.008", *COMMON]
    assert main(args) == 0
    training = AnomalyModel.load(model_path).metadata["training"]
    assert training["placement"] == shipped.record() and training["gan"]["placement"] == shipped.record()
    assert "out_of_range_slices" in training["data"]["encoder_data"]

    head_path = tmp_path / "head.safetensors"
    args = ["train-head", "--model", str(model_path), "--data", str(volume_folder), "--out", str(head_path)]
    args += ["--steps", "1", "--batch", "2", "--validate-every", "1", "--channels", "4", "8", *COMMON]
    assert main(args) == 0
    head_placement = AnomalyModel.load(head_path).metadata["head"]["training"]["placement"]
    assert head_placement["regressor_id"] == shipped.regressor_id and "out_of_range_slices" in head_placement

    # A model file without a regressor is one line too.
    capsys.readouterr()
    args = ["train-encoder", "--gan", str(run), "--out", str(tmp_path / "again.safetensors")]
    assert main([*args, "--position-regressor", str(model_path), *COMMON]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --position-regressor: {model_path} holds no position regressor (make one with "
        "`anomalyscout position-train`)"
    ]


def test_without_the_option_every_stage_records_index(tmp_path, volume_folder, tiny_config_file, capsys):
    run = tmp_path / "gan"
    assert _train_gan(volume_folder, tiny_config_file, run) == 0
    options = json.loads((run / "training_options.json").read_text())
    assert options["placement"] == {"method": "index"} and "out_of_range_slices" not in options["data"]
    model_path = tmp_path / "model.safetensors"
    args = ["train-encoder", "--gan", str(run), "--out", str(model_path), "--kimg", "0.008", *COMMON]
    assert main(args) == 0
    assert AnomalyModel.load(model_path).metadata["training"]["placement"] == {"method": "index"}

    # A resumed run keeps its placement: asking it to place by anatomy is one line, before any work.
    resume = ["train-gan", "--out", str(run), "--resume", "--position-regressor", str(SHIPPED), *COMMON]
    capsys.readouterr()
    assert main(resume) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "was trained with slices placed by index, not by anatomy" in lines[0]


@pytest.mark.parametrize("command", ["train-gan", "train-encoder", "train-head"])
def test_a_bad_regressor_file_is_one_line(command, tmp_path, volume_folder, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a regressor")
    out = tmp_path / "out.safetensors"
    args = {
        "train-gan": ["train-gan", "--data", str(volume_folder), "--out", str(tmp_path / "run")],
        "train-encoder": ["train-encoder", "--gan", str(tmp_path / "run"), "--out", str(out)],
        "train-head": [
            "train-head",
            "--model",
            str(tmp_path / "m"),
            "--data",
            str(volume_folder),
            "--out",
            str(out),
        ],
    }[command]
    assert main([*args, "--position-regressor", str(bad), *COMMON]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --position-regressor: {bad} is not a readable")
