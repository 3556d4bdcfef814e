"""``anomalyscout phantom`` writes exactly what its manifest lists."""

from __future__ import annotations

import json

import numpy as np
import pytest

from AnomalyScoutLib.cli import main
from AnomalyScoutLib.io.volume import read_label_map, read_volume
from AnomalyScoutLib.phantom import make_phantom


@pytest.mark.parametrize("extension", ["nii.gz", "nrrd"])
def test_writes_volumes_label_maps_masks_and_a_manifest_that_lists_them(tmp_path, extension):
    out = tmp_path / "cases"
    code = main(["phantom", "--out", str(out), "--n", "2", "--seed", "5", "--shape", "48,48,12",
                 "--format", extension, "--preview"])  # fmt: skip
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [case["seed"] for case in manifest["cases"]] == [5, 6]
    listed = {name for case in manifest["cases"] for name in case["files"].values()}
    assert listed | {"manifest.json", "preview.png"} == {p.name for p in out.iterdir()}
    first = manifest["cases"][0]
    volume = read_volume(out / first["files"]["ct"])
    expected = make_phantom(5, shape_xyz=(48, 48, 12))
    np.testing.assert_array_equal(volume.array_zyx, expected.volume.array_zyx)
    np.testing.assert_allclose(volume.spacing_xyz, expected.volume.spacing_xyz)
    np.testing.assert_array_equal(read_label_map(out / first["files"]["labels"]), expected.labels)
    assert not read_label_map(out / first["files"]["anomaly_mask"]).any()
    assert first["anomalies"] == [] and first["anomalous_slices"] == []


def test_a_too_small_field_of_view_is_one_line_error_with_exit_code_1(tmp_path, capsys):
    code = main(["phantom", "--out", str(tmp_path), "--shape", "32,32,8", "--spacing", "1,1,3"])
    assert code == 1
    assert "field of view" in capsys.readouterr().err
    assert not (tmp_path / "manifest.json").exists()


def test_an_unknown_anomaly_kind_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["phantom", "--out", str(tmp_path), "--anomalies", "gremlin"])
    assert exit_info.value.code == 2


def test_the_manifest_lists_each_anomaly_and_the_slices_its_mask_covers(tmp_path):
    out = tmp_path / "cases"
    assert main(["phantom", "--out", str(out), "--shape", "64,64,24", "--anomalies", "tumour,metal"]) == 0
    (case,) = json.loads((out / "manifest.json").read_text())["cases"]
    mask = read_label_map(out / case["files"]["anomaly_mask"])
    assert [a["kind"] for a in case["anomalies"]] == ["tumour", "metal"]
    assert case["anomalous_slices"] == [int(k) for k in np.flatnonzero(mask.any(axis=(1, 2)))]
    metal = next(a for a in case["anomalies"] if a["kind"] == "metal")
    assert set(metal["slices"]) <= set(case["anomalous_slices"]) and metal["parameters"]["device"]
