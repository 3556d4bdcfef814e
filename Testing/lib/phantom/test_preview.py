"""The preview montage shows every anomaly where it is largest."""

from __future__ import annotations

import numpy as np

from AnomalyScoutLib.phantom.preview import preview_slices, save_preview


def test_each_anomaly_is_shown_on_the_slice_where_it_is_largest(tiny_anomalous_phantom):
    slices = preview_slices(tiny_anomalous_phantom, count=4)
    n = tiny_anomalous_phantom.anomaly_mask.shape[0]
    for record in tiny_anomalous_phantom.anomalies:
        per_slice = (tiny_anomalous_phantom.anomaly_mask == record.code).reshape(n, -1).sum(axis=1)
        assert int(per_slice.argmax()) in slices
    assert len(slices) == 4 and slices == sorted(set(slices))


def test_a_normal_case_is_shown_at_spread_positions(tiny_phantom):
    slices = preview_slices(tiny_phantom, count=6)
    assert len(slices) == 6 and np.ptp(slices) > tiny_phantom.labels.shape[0] // 2


def test_the_montage_is_written_as_a_png(tiny_phantom, tiny_anomalous_phantom, tmp_path):
    path = tmp_path / "preview.png"
    save_preview([tiny_phantom, tiny_anomalous_phantom], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["preview.png"]
