"""The heatmap over the CT as a user sees it: a slice view rendered offscreen by slicer-core's slice logic."""

from __future__ import annotations

import numpy as np
import pytest
from AnomalyScoutModuleLib.scene import SceneResults
from module_helpers import ANOMALY_BOX_YX, ANOMALY_SLICE, ORIGIN_XYZ, SPACING_XYZ
from slice_rendering import heat_pixels, ras_to_pixel, render_axial


def _anomaly_centre_ras() -> tuple[float, float, float]:
    """The RAS centre of the synthetic anomaly box (identity direction: LPS x, y negated)."""
    rows, cols = ANOMALY_BOX_YX
    i, j = (cols.start + cols.stop - 1) / 2, (rows.start + rows.stop - 1) / 2
    return (
        -(ORIGIN_XYZ[0] + SPACING_XYZ[0] * i),
        -(ORIGIN_XYZ[1] + SPACING_XYZ[1] * j),
        ORIGIN_XYZ[2] + SPACING_XYZ[2] * ANOMALY_SLICE,
    )


@pytest.fixture
def shown(scene, ct_node, run_dir, red_slice_logic):
    out, _ = run_dir
    ct_node.GetDisplayNode().SetAutoWindowLevel(False)
    ct_node.GetDisplayNode().SetWindowLevel(400, 40)
    SceneResults(scene).show_results(ct_node, out, opacity=0.7)
    return red_slice_logic


def test_the_heatmap_tints_the_anomaly_and_nothing_far_from_it(shown):
    centre = _anomaly_centre_ras()
    rgba = render_axial(shown, centre[2])
    tinted = heat_pixels(rgba)
    row, col = ras_to_pixel(shown, centre)

    assert tinted[row, col]
    assert col < rgba.shape[1] // 2  # the patient's right (R > 0) on the left of the picture, as in Slicer
    ys, xs = np.nonzero(tinted)
    pixel_mm = shown.GetSliceNode().GetFieldOfView()[0] / rgba.shape[1]
    # every tinted pixel lies within the anomaly box (half-diagonal ~9 mm) of its centre
    assert np.hypot(ys - row, xs - col).max() * pixel_mm < 10
    # the body 20 mm closer to the image centre stays grey CT
    side = col + round(20 / pixel_mm) * (1 if col < rgba.shape[1] // 2 else -1)
    assert rgba[row, side, 0] == rgba[row, side, 2] > 0


def test_a_slice_without_anomaly_shows_the_ct_untinted(shown):
    centre = _anomaly_centre_ras()
    rgba = render_axial(shown, centre[2] - 5 * SPACING_XYZ[2])
    assert not heat_pixels(rgba).any()
    assert rgba[..., 0].max() > 0  # the CT itself is drawn


def test_lowering_the_threshold_tints_more_and_zero_opacity_hides_it(shown, scene):
    centre = _anomaly_centre_ras()
    before = heat_pixels(render_axial(shown, centre[2])).sum()
    results = SceneResults(scene)
    residual = scene.GetFirstNodeByName("case1 residual")
    results.set_threshold(residual, 0.005)
    assert heat_pixels(render_axial(shown, centre[2])).sum() > before
    results.set_opacity(0.0)
    assert not heat_pixels(render_axial(shown, centre[2])).any()
