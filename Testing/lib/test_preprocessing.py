"""Model preprocessing: HU window, aspect-preserving model grid and inverse, body mask, slice positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from AnomalyScoutLib.errors import ConfigError, VolumeError
from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
from AnomalyScoutLib.io.volume import read_volume
from AnomalyScoutLib.preprocessing import HUWindow, body_mask, model_grid, slice_positions

torch.set_num_threads(1)
DATA = Path(__file__).resolve().parents[1] / "Data" / "totalsegmentator_abdomen"


@pytest.fixture(scope="module")
def real_ct() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The real abdomen CT and its liver mask, canonical, with the canonical spacing."""
    volume = read_volume(DATA / "example_ct.nii.gz")
    liver = read_volume(DATA / "example_ct_liver.nii.gz", validate=False)
    frame = axial_frame(volume)
    return to_canonical(volume.array_zyx, frame), to_canonical(liver.array_zyx, frame) > 0, frame.spacing_kji


# --- HU window ---


def test_the_window_maps_its_ends_to_minus_one_and_one_and_clips_outside():
    window = HUWindow(-100.0, 300.0)
    hu = np.array([-1000.0, -100.0, 100.0, 300.0, 3000.0])
    np.testing.assert_allclose(window.normalize(hu), [-1.0, -1.0, 0.0, 1.0, 1.0])


@pytest.mark.parametrize("as_tensor", [False, True])
def test_denormalize_inverts_normalize_inside_the_window_for_numpy_and_torch(as_tensor):
    window = HUWindow()
    hu = np.linspace(window.low, window.high, 101)
    values = torch.from_numpy(hu) if as_tensor else hu
    back = window.denormalize(window.normalize(values))
    assert isinstance(back, torch.Tensor) == as_tensor
    np.testing.assert_allclose(np.asarray(back), hu, atol=1e-9)


def test_the_window_survives_the_model_file_form():
    window = HUWindow(-160.0, 240.0)
    stored = {**window.to_dict(), "position": "index"}
    assert HUWindow.from_dict(stored) == window


@pytest.mark.parametrize(
    "preprocessing", [{}, {"hu_window": [1.0]}, {"hu_window": ["a", "b"]}, {"hu_window": [300.0, -300.0]}]
)
def test_a_malformed_stored_window_is_a_config_error(preprocessing):
    with pytest.raises(ConfigError, match="hu_window|low < high"):
        HUWindow.from_dict(preprocessing)


# --- model grid ---


def test_the_model_grid_preserves_the_physical_aspect_and_centres_the_slice():
    grid = model_grid((100, 200), (1.5, 0.5), 64)  # 150 mm high, 100 mm wide
    assert grid.content_rc == (64, round(64 * 100 / 150))
    assert grid.pixel_mm == pytest.approx(150 / 64)
    left = grid.offset_rc[1]
    right = 64 - left - grid.content_rc[1]
    assert grid.offset_rc[0] == 0 and abs(left - right) <= 1


def test_a_disc_stays_round_on_the_model_grid_whatever_the_pixel_spacing():
    rows, cols, spacing = 120, 300, (1.0, 0.4)  # a 120 mm square field of view in oblong pixels
    r_mm, c_mm = np.meshgrid(
        (np.arange(rows) + 0.5) * spacing[0], (np.arange(cols) + 0.5) * spacing[1], indexing="ij"
    )
    disc = ((r_mm - 60) ** 2 + (c_mm - 60) ** 2 < 40**2).astype(np.float32)
    grid = model_grid((rows, cols), spacing, 96)
    on_model = grid.to_model(disc[None], fill=0.0)[0] > 0.5
    height = np.ptp(np.nonzero(on_model.any(axis=1))[0]) + 1
    width = np.ptp(np.nonzero(on_model.any(axis=0))[0]) + 1
    assert abs(height - width) <= 1
    assert height == pytest.approx(80 / grid.pixel_mm, abs=2)


def test_to_model_pads_with_the_fill_value_outside_the_content():
    grid = model_grid((40, 80), (1.0, 1.0), 32)
    maps = grid.to_model(np.full((3, 40, 80), 0.25, np.float32), fill=-1.0)
    assert maps.shape == (3, 32, 32) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[:, grid.content_mask], 0.25, atol=1e-6)
    np.testing.assert_array_equal(maps[:, ~grid.content_mask], -1.0)


@pytest.mark.parametrize(
    ("shape_rc", "spacing", "resolution"), [((90, 70), (0.8, 0.8), 128), ((256, 200), (0.7, 1.1), 64)]
)
def test_from_model_inverts_to_model_for_smooth_images(shape_rc, spacing, resolution):
    rng = np.random.default_rng(0)
    smooth = ndimage.gaussian_filter(rng.normal(size=(2, *shape_rc)), sigma=(0, 12, 12)).astype(np.float32)
    smooth /= np.abs(smooth).max()
    grid = model_grid(shape_rc, spacing, resolution)
    back = grid.from_model(grid.to_model(smooth))
    assert back.shape == smooth.shape
    assert np.abs(back - smooth)[:, 3:-3, 3:-3].max() < 0.05


def test_the_model_grid_keeps_torch_tensors_as_tensors_and_works_on_real_ct(real_ct):
    canonical, _, spacing = real_ct
    window = HUWindow()
    slices = torch.from_numpy(window.normalize(canonical[::10]))
    grid = model_grid(canonical.shape[1:], spacing[1:], 64)
    on_model = grid.to_model(slices)
    assert isinstance(on_model, torch.Tensor) and on_model.shape == (len(slices), 64, 64)
    back = grid.from_model(on_model)
    assert isinstance(back, torch.Tensor) and back.shape == slices.shape
    assert (back - slices).abs().mean() < 0.1


def test_the_model_grid_refuses_wrong_shapes_and_sizes():
    grid = model_grid((40, 40), (1.0, 1.0), 32)
    with pytest.raises(VolumeError, match=r"expected \(n, 40, 40\)"):
        grid.to_model(np.zeros((2, 40, 41)))
    with pytest.raises(VolumeError, match=r"expected \(n, 32, 32\)"):
        grid.from_model(np.zeros((32, 32)))
    with pytest.raises(ConfigError, match="spacing"):
        model_grid((40, 40), (0.0, 1.0), 32)
    with pytest.raises(ConfigError, match="positive sizes"):
        model_grid((40, 40), (1.0, 1.0), 0)


# --- body mask ---


def test_the_body_mask_holds_the_whole_liver_and_leaves_the_outside_air_out(real_ct):
    canonical, liver, _ = real_ct
    mask = body_mask(canonical)
    assert mask[liver].mean() > 0.999
    outside_air = ~ndimage.binary_dilation(mask, iterations=2) & (canonical < -900)
    assert outside_air.sum() > 0.1 * canonical[0].size, "this scan has air around the body"
    assert mask[canonical > -500].mean() > 0.95, "nearly all tissue is the patient (the rest: table, cables)"
    for section in mask[::8]:
        np.testing.assert_array_equal(ndimage.binary_fill_holes(section), section)


def test_the_body_mask_keeps_both_legs_drops_the_table_and_fills_the_gas():
    hu = np.full((6, 64, 64), -1000.0, np.float32)
    rows, cols = np.mgrid[:64, :64]
    legs = ((rows - 30) ** 2 + (cols - 17) ** 2 < 144) | ((rows - 30) ** 2 + (cols - 47) ** 2 < 144)
    trunk = (rows - 30) ** 2 / 15**2 + (cols - 32) ** 2 / 25**2 < 1
    gas = (rows - 30) ** 2 + (cols - 32) ** 2 < 9
    hu[:3][:, legs] = 40.0
    hu[3:][:, trunk] = 40.0
    hu[3:][:, gas] = -1000.0
    hu[:, 58, 5:59] = 300.0  # the table: a thin dense shell under the patient, apart from it
    mask = body_mask(hu)
    assert mask[:3][:, legs].all(), "both legs belong to the body through the pelvis above"
    assert mask[3:][:, gas].all(), "gas inside the body is inside the body"
    assert not mask[:, 58].any(), "the table is not the patient"
    thighs_only = body_mask(hu[:3])
    assert thighs_only[:, legs].all(), "a batch of thigh slices keeps both legs"
    assert not thighs_only[:, 58].any()


@pytest.mark.parametrize("seed", range(20))
def test_the_body_mask_equals_the_largest_parts_with_each_slices_holes_filled(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 14, 3))
    hu = np.where(rng.random(shape) < rng.uniform(0.2, 0.9), 0.0, -1000.0)
    labels, count = ndimage.label(hu > -500.0)
    sizes = np.bincount(labels.ravel())[1:]
    parts = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.25 * sizes.max())) if count else labels > 0
    expected = np.stack([ndimage.binary_fill_holes(part) for part in parts])
    np.testing.assert_array_equal(body_mask(hu), expected)


@pytest.mark.parametrize("seed", range(12))
def test_air_around_the_patient_does_not_change_the_body_mask(seed):
    """body_mask labels only the box that holds tissue: parts touching that box's edges, several parts and
    holes open to the box's edge must come out as they do from the whole slices."""
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(n) for n in rng.integers(2, 12, 3))
    hu = np.where(rng.random(shape) < rng.uniform(0.2, 0.9), 0.0, -1000.0)
    margins = [(0, 0)] + [tuple(int(m) for m in rng.integers(0, 6, 2)) for _ in range(2)]
    padded = np.pad(hu, margins, constant_values=-1000.0)
    labels, count = ndimage.label(padded > -500.0)
    sizes = np.bincount(labels.ravel())[1:]
    parts = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.25 * sizes.max())) if count else labels > 0
    expected = np.stack([ndimage.binary_fill_holes(part) for part in parts])
    np.testing.assert_array_equal(body_mask(padded), expected)
    np.testing.assert_array_equal(body_mask(padded), np.pad(body_mask(hu), margins))


def test_the_body_mask_of_pure_air_is_empty_and_2d_input_is_refused():
    assert not body_mask(np.full((2, 16, 16), -1000.0)).any()
    with pytest.raises(VolumeError, match="slices, rows, cols"):
        body_mask(np.zeros((16, 16)))


# --- slice positions ---


def test_index_positions_are_slice_centres_from_inferior_to_superior(real_ct):
    canonical, _, spacing = real_ct
    positions = slice_positions(canonical, spacing)
    n = canonical.shape[0]
    assert positions.dtype == np.float32 and positions.shape == (n,)
    assert positions[0] == pytest.approx(0.5 / n) and positions[-1] == pytest.approx(1 - 0.5 / n)
    np.testing.assert_allclose(np.diff(positions), 1 / n, rtol=1e-5)


def test_an_unknown_position_method_is_a_config_error(real_ct):
    canonical, _, spacing = real_ct
    with pytest.raises(ConfigError, match="'atlas'"):
        slice_positions(canonical, spacing, method="atlas")


@pytest.mark.parametrize(
    "shape_rc, spacing", [((512, 512), (0.8, 0.8)), ((300, 420), (1.0, 0.7)), ((64, 40), (2.0, 3.0))]
)
def test_hounsfield_units_may_be_restored_before_or_after_resampling_to_the_input_grid(shape_rc, spacing):
    """The engine restores HU on the model grid, then resamples (16x less arithmetic at 512²): the same map
    as restoring them on the input grid, up to float rounding."""
    window, grid = HUWindow(), model_grid(shape_rc, spacing, 128)
    images = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
    after = window.denormalize(grid.from_model(images))
    before = grid.from_model(window.denormalize(images))
    assert before.shape == (3, *shape_rc)
    torch.testing.assert_close(before, after, rtol=0.0, atol=1e-3)
