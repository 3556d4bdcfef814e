"""Training slices placed by anatomy (``train/data.py`` with a regressor, ``train/placement.py``).

A real CT rarely runs from the pelvis floor to the lung bases; placed by index its slices would condition the
generator on wrong positions. Here a crop of a phantom (whose index *is* the anatomical scale, so its true
positions are known) stands in for such a scan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from AnomalyScoutLib.anomaly_map.data import load_normal_slices
from AnomalyScoutLib.errors import ConfigError, VolumeError
from AnomalyScoutLib.io.volume import Volume, write_volume
from AnomalyScoutLib.position.store import save_regressor
from AnomalyScoutLib.preprocessing import HUWindow
from AnomalyScoutLib.train.data import load_slices, preprocess_volume
from AnomalyScoutLib.train.placement import (
    INDEX,
    load_placement,
    recorded_placement,
    require_same_placement,
)

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "position.safetensors"


@pytest.fixture(scope="module")
def shipped():
    return load_placement(SHIPPED)


def _upper_half(volume: Volume) -> Volume:
    """Slices 12..23 of the 24-slice phantom: the upper abdomen only, as a liver scan would be."""
    return Volume(volume.array_zyx[12:], volume.spacing_xyz, volume.origin_xyz, volume.direction)


def test_a_crop_placed_by_anatomy_gets_its_true_positions_and_by_index_does_not(tiny_phantom, shipped):
    crop = _upper_half(tiny_phantom.volume)
    truth = (np.arange(12, 24) + 0.5) / 24
    by_anatomy = preprocess_volume(crop, 16, HUWindow(), regressor=shipped.regressor)
    by_index = preprocess_volume(crop, 16, HUWindow())
    assert len(by_anatomy.positions) == 12 and by_anatomy.out_of_range == {}
    assert np.median(np.abs(by_anatomy.positions.numpy() - truth)) < 0.06
    assert np.all(np.diff(by_anatomy.positions.numpy()) > 0)
    # Without a regressor: today's index placement, 0..1 over the crop, a quarter of the scale off.
    assert np.allclose(by_index.positions.numpy(), (np.arange(12) + 0.5) / 12)
    assert by_index.out_of_range is None


def test_out_of_range_slices_are_dropped_and_counted_and_the_rest_clipped_to_the_scale(
    tiny_phantom, tiny_regressor, estimates
):
    """The regressor sees the phantom shifted 0.4 up (its top third lies above the lung bases); one air
    slice on top is a body-filter skip, not counted again by the gate."""
    volume = tiny_phantom.volume
    air = np.full_like(volume.array_zyx[:1], -1000.0)
    scan = Volume(
        np.concatenate([volume.array_zyx, air]), volume.spacing_xyz, volume.origin_xyz, volume.direction
    )
    estimates(0.4 + (np.arange(25) + 0.5) / 24)
    placed = preprocess_volume(scan, 16, HUWindow(), regressor=tiny_regressor)
    positions = placed.positions.numpy()
    assert placed.skipped == 1 and set(placed.out_of_range) == {"above"}
    assert len(positions) + placed.out_of_range["above"] + placed.skipped == 25
    assert 6 <= placed.out_of_range["above"] <= 10  # slices fitted above 1.05 (about 16..23)
    assert positions.max() == 1.0 and positions.min() > 0.35  # clipped: the networks see [0, 1] only
    assert np.all(np.diff(positions) >= 0)


def test_the_loaders_sum_the_counts_and_say_what_the_gate_took_when_nothing_is_left(
    tiny_phantom, tiny_regressor, estimates, tmp_path
):
    paths = []
    for i in range(2):
        write_volume(tiny_phantom.volume, tmp_path / f"ct{i}.nrrd")
        paths.append(tmp_path / f"ct{i}.nrrd")
    estimates(np.linspace(0.3, 1.6, 24))
    data = load_slices(paths, 16, HUWindow(), regressor=tiny_regressor)
    above = data.out_of_range["above"]
    assert above > 0 and len(data) + above == 48 and data.summary()["out_of_range_slices"] == {"above": above}
    normal = load_normal_slices(paths, 16, HUWindow(), regressor=tiny_regressor)
    assert normal.out_of_range == {"above": above} and len(normal) == len(data)
    estimates(np.full(24, 1.0))  # a chest scan: every slice saturates the regressor at the top
    with pytest.raises(VolumeError, match=r"in the model's range \(out of range, dropped: above 48\)"):
        load_slices(paths, 16, HUWindow(), regressor=tiny_regressor)


def test_without_a_regressor_the_slice_set_is_todays(tiny_phantom, tmp_path):
    write_volume(tiny_phantom.volume, tmp_path / "ct.nrrd")
    data = load_slices([tmp_path / "ct.nrrd"], 16, HUWindow())
    assert data.out_of_range is None
    assert set(data.summary()) == {"volumes", "slices", "skipped_slices", "sources"}
    assert np.allclose(data.positions.numpy(), (np.arange(24) + 0.5) / 24)


def test_a_placement_is_recorded_and_read_back_by_the_regressors_tensors(
    shipped, tiny_regressor, regressor_model_file, tmp_path
):
    record = shipped.record()
    assert record["method"] == "anatomy" and record["regressor_file"] == str(SHIPPED)
    assert recorded_placement(record, "the run").regressor_id == shipped.regressor_id
    assert recorded_placement(None, "an old run") is INDEX and INDEX.record() == {"method": "index"}
    # A model file holding the regressor names it by the same id as the regressor's own file.
    tiny_file = save_regressor(tmp_path / "tiny.safetensors", tiny_regressor, {"training": {}})
    assert load_placement(regressor_model_file).regressor_id == load_placement(tiny_file).regressor_id

    moved = {**record, "regressor_file": str(tmp_path / "gone.safetensors")}
    assert recorded_placement(moved, "the model", held=shipped.regressor).regressor is shipped.regressor
    with pytest.raises(ConfigError, match="the model placed its slices by anatomy .* cannot be read now"):
        recorded_placement(moved, "the model")
    swapped = {**record, "regressor_file": str(tiny_file)}
    with pytest.raises(ConfigError, match="that file now holds regressor .*give --position-regressor FILE"):
        recorded_placement(swapped, "the GAN run")

    require_same_placement(shipped, record, "the run")
    with pytest.raises(ConfigError, match="placed by index, not by anatomy .* keeps its placement"):
        require_same_placement(shipped, None, "--resume: the run")


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (b"not safetensors", "is not a readable safetensors file")],
)
def test_a_file_without_a_regressor_is_one_line_naming_the_option(tmp_path, content, message):
    path = tmp_path / "position.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"^--position-regressor: .*{message}") as error:
        load_placement(path)
    assert "\n" not in str(error.value)
