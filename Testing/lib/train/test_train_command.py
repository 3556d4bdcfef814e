"""``anomalyscout train``: GAN, encoder and calibration in one resumable command, on held-out normals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY

from AnomalyScoutLib.calibration import DENOISER_CALIBRATION_KEY
from AnomalyScoutLib.cli import main
from AnomalyScoutLib.commands.train import split_volumes
from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.io.volume import Volume, write_volume
from AnomalyScoutLib.train.checkpoint import CHECKPOINT_NAME, load_checkpoint

COMMON = ["--device", "cpu", "--threads", "1", "--no-progress", "--res", "16", "--batch", "8"]
COMMON += ["--calibration-modes", "fast"]


@pytest.fixture()
def volumes(tmp_path, tiny_phantom) -> Path:
    folder = tmp_path / "volumes"
    folder.mkdir()
    volume = tiny_phantom.volume
    for i in range(3):
        array = volume.array_zyx + 3.0 * i
        write_volume(
            Volume(array, volume.spacing_xyz, volume.origin_xyz, volume.direction), folder / f"ct{i}.nrrd"
        )
    return folder


def _train_args(volumes: Path, model_path: Path, config_file: Path) -> list[str]:
    """``anomalyscout train`` on the three tiny volumes with the tiny architecture, the last one held out."""
    return ["train", str(volumes), "--out", str(model_path), "--config", str(config_file), "--holdout", "1"]


def test_split_holds_out_the_last_volumes_and_refuses_to_hold_out_everything():
    paths = [Path(f"v{i}.nrrd") for i in range(10)]
    training, held_out = split_volumes(paths, None)
    assert held_out == paths[8:] and training == paths[:8]
    assert split_volumes(paths, 3)[1] == paths[7:]
    with pytest.raises(ConfigError, match="hold out 10 of 10"):
        split_volumes(paths, 10)
    with pytest.raises(ConfigError, match="hold out 1 of 1"):
        split_volumes(paths[:1], None)


def test_one_command_trains_calibrates_on_held_out_volumes_and_resumes(tmp_path, volumes, tiny_config_file):
    from AnomalyScoutLib.model_file import AnomalyModel

    model_path = tmp_path / "site.safetensors"
    args = _train_args(volumes, model_path, tiny_config_file)
    narrow = ["--offset-scale", "0.5", "--no-single-w"]  # train narrows by default (0.6, one w): override it
    assert main([*args, "--gan-kimg", "0.016", "--encoder-kimg", "0.016", *narrow, *COMMON]) == 0

    work = tmp_path / "site.safetensors.run"
    trained_on = (work / "train-list.txt").read_text().split()
    calibrated_on = (work / "calibration-list.txt").read_text().split()
    assert [Path(p).name for p in trained_on] == ["ct0.nrrd", "ct1.nrrd"]
    assert [Path(p).name for p in calibrated_on] == ["ct2.nrrd"]
    gan_options = json.loads((work / "gan" / "training_options.json").read_text())
    assert gan_options["architecture"] == TINY.to_dict() and gan_options["data"]["volumes"] == 2
    model = AnomalyModel.load(model_path)
    calibration = model.calibration
    assert calibration and [key.split("/")[0] for key in calibration["modes"]] == ["atlas", "fast"]
    assert all(m["n_cases"] == 1 for m in calibration["modes"].values())  # the held-out volume, and only it
    assert model.atlas is not None and model.metadata["position_atlas"]["volumes"] == 2  # training volumes
    assert model.metadata["training"]["gan"]["kimg"] == 0.016
    assert model.metadata["training"]["encoder"]["code_space"] == {"offset_scale": 0.5, "single_w": False}

    # The same command with a longer GAN continues the run from its checkpoint; the encoder file is kept.
    encoder_mtime = (work / "encoder.safetensors").stat().st_mtime_ns
    assert main([*args, "--gan-kimg", "0.032", "--encoder-kimg", "0.016", *COMMON]) == 0
    assert load_checkpoint(work / "gan" / CHECKPOINT_NAME).state["images_seen"] == 32
    assert (work / "encoder.safetensors").stat().st_mtime_ns == encoder_mtime


def test_calibration_volumes_that_were_trained_on_are_refused(tmp_path, volumes, tiny_config_file, capsys):
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(f"{volumes / 'ct2.nrrd'}\n{tmp_path / 'volumes' / '..' / 'volumes' / 'ct0.nrrd'}\n")
    code = main(["train", str(volumes), "--out", str(tmp_path / "m.safetensors"),
                 "--calibration-data", str(held_out), *COMMON])  # fmt: skip
    assert code == 1 and "shares 2 volume" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_the_head_denoiser_and_position_regressor_are_optional_stages_before_calibration(
    tmp_path, volumes, tiny_config_file
):
    from AnomalyScoutLib.model_file import AnomalyModel

    model_path = tmp_path / "site.safetensors"
    regressor = Path(__file__).resolve().parents[3] / "models" / "position.safetensors"
    args = _train_args(volumes, model_path, tiny_config_file)
    args += ["--gan-kimg", "0.008", "--encoder-kimg", "0.008", "--head-steps", "2", "--denoiser-steps", "2"]
    assert main([*args, "--position-regressor", str(regressor), *COMMON]) == 0

    work = tmp_path / "site.safetensors.run"
    for stage in ("head", "denoiser", "placed"):
        assert (work / f"{stage}.safetensors").is_file()
    model = AnomalyModel.load(model_path)
    assert model.head is not None and model.position_regressor is not None and model.denoiser is not None
    assert model.calibration is not None  # calibrated last: the head changes the score it calibrates
    assert DENOISER_CALIBRATION_KEY in model.calibration["modes"]
    # Every stage placed its slices by anatomy with the regressor the model now holds.
    placed = {"method": "anatomy", "regressor_file": str(regressor)}
    gan_options = json.loads((work / "gan" / "training_options.json").read_text())
    for record in (
        gan_options["placement"],
        model.metadata["training"]["placement"],
        model.metadata["training"]["gan"]["placement"],
        model.metadata["head"]["training"]["placement"],
        model.metadata["denoiser"]["training"]["placement"],
    ):
        assert placed.items() <= record.items()


def test_a_new_site_gets_the_shipped_models_narrowing_by_default_and_train_encoder_does_not():
    from AnomalyScoutLib.cli import build_parser

    site = build_parser(["train"]).parse_args(["train", "data", "--out", "m.safetensors"])
    assert (site.offset_scale, site.single_w) == (0.6, True)
    encoder = build_parser(["train-encoder"]).parse_args(["train-encoder", "--gan", "g", "--out", "m"])
    assert (encoder.offset_scale, encoder.single_w) == (1.0, False)
