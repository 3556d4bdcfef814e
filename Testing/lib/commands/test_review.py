"""``anomalyscout review CT --segmentation SEG --out DIR``: per-slice risk in and around a segmentation."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from AnomalyScoutLib.cli import main
from AnomalyScoutLib.io.volume import Volume, write_volume
from AnomalyScoutLib.phantom.anatomy import LABEL_NAMES

LIVER = next(code for code, name in LABEL_NAMES.items() if name == "liver")


def _label_volume(reference: Volume, array_zyx: np.ndarray) -> Volume:
    return Volume(
        array_zyx.astype(np.uint8), reference.spacing_xyz, reference.origin_xyz, reference.direction
    )


@pytest.fixture
def case_files(tiny_anomalous_phantom, tmp_path: Path) -> tuple[Path, Path]:
    """The tiny anomalous phantom and its whole label map (the liver is label ``LIVER``)."""
    volume = tiny_anomalous_phantom.volume
    write_volume(volume, tmp_path / "ct.nrrd")
    write_volume(_label_volume(volume, tiny_anomalous_phantom.labels), tmp_path / "labels.nrrd")
    return tmp_path / "ct.nrrd", tmp_path / "labels.nrrd"


def _review(ct: Path, seg: Path, out: Path, model: Path, *extra: str) -> int:
    args = ["review", str(ct), "--segmentation", str(seg), "--out", str(out), "--model", str(model)]
    return main([*args, "--device", "cpu", "--threads", "1", *extra])


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_writes_one_row_per_slice_with_a_risk_exactly_on_the_organs_slices(
    case_files, tiny_anomalous_phantom, tiny_model_file, tmp_path
):
    ct, labels = case_files
    out = tmp_path / "review"
    assert _review(ct, labels, out, tiny_model_file, "--label", str(LIVER), "--margin-mm", "0") == 0
    rows = _rows(out / "review.csv")
    assert list(rows[0]) == ["slice_index", "position", "risk", "flagged"]
    assert [int(r["slice_index"]) for r in rows] == list(range(tiny_anomalous_phantom.labels.shape[0]))
    # The phantom is stored in canonical order, so its file slices are the canonical ones.
    liver_slices = (tiny_anomalous_phantom.labels == LIVER).any(axis=(1, 2))
    assert 0 < liver_slices.sum() < len(rows)
    assert [r["risk"] != "" for r in rows] == liver_slices.tolist()
    assert (out / "review.png").stat().st_size > 0
    assert (out / "residual.nrrd").is_file()


def test_risk_is_the_score_over_its_calibrated_threshold_and_flags_exactly_above_one(
    case_files, tiny_model_file, tmp_path
):
    ct, labels = case_files
    out = tmp_path / "review"
    assert _review(ct, labels, out, tiny_model_file, "--label", str(LIVER)) == 0
    slices = json.loads((out / "scores.json").read_text())["slices"]
    for row, scored in zip(_rows(out / "review.csv"), slices):
        if row["risk"] == "":
            assert row["flagged"] == "0"
            continue
        risk = float(row["risk"])
        assert risk == pytest.approx(scored["score"] / scored["threshold"], rel=1e-5)
        assert (row["flagged"] == "1") == (risk > 1.0)


def test_an_empty_segmentation_is_one_clear_line_and_writes_nothing(
    case_files, tiny_anomalous_phantom, tiny_model_file, tmp_path, capsys
):
    ct, _ = case_files
    empty = tmp_path / "empty.nrrd"
    volume = tiny_anomalous_phantom.volume
    write_volume(_label_volume(volume, np.zeros(volume.array_zyx.shape)), empty)
    out = tmp_path / "review"
    assert _review(ct, empty, out, tiny_model_file) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "segmentation is empty" in err[0] and str(empty) in err[0]
    assert not out.exists()


def test_a_label_map_on_another_grid_is_one_clear_line_and_writes_nothing(
    case_files, tiny_anomalous_phantom, tiny_model_file, tmp_path, capsys
):
    ct, _ = case_files
    other = tmp_path / "other.nrrd"
    volume = tiny_anomalous_phantom.volume
    write_volume(_label_volume(volume, tiny_anomalous_phantom.labels[:, ::2, ::2].copy()), other)
    out = tmp_path / "review"
    assert _review(ct, other, out, tiny_model_file) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not on the grid" in err[0]
    assert not out.exists()


def test_leaves_its_inputs_untouched(case_files, tiny_model_file, tmp_path):
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in case_files}
    assert _review(*case_files, tmp_path / "review", tiny_model_file) == 0
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in case_files} == before


def test_a_slice_with_metal_in_the_region_has_infinite_risk_and_is_flagged(
    case_files, tiny_anomalous_phantom, tiny_model_file, tmp_path
):
    from AnomalyScoutLib.intensity_envelope import FLOOR_HU, METADATA_KEY, IntensityEnvelope
    from AnomalyScoutLib.model_file import AnomalyModel
    from AnomalyScoutLib.phantom import ANOMALY_CODES

    model = AnomalyModel.load(tiny_model_file)
    model.metadata[METADATA_KEY] = IntensityEnvelope(FLOOR_HU).to_json()
    with_envelope = model.save(tmp_path / "with-envelope.safetensors")
    ct, labels = case_files  # the whole label map: every body voxel is in the region
    out = tmp_path / "review"
    assert _review(ct, labels, out, with_envelope) == 0
    metal = (tiny_anomalous_phantom.anomaly_mask == ANOMALY_CODES["metal"]).any(axis=(1, 2))
    rows = _rows(out / "review.csv")
    assert [r["risk"] == "inf" for r in rows] == metal.tolist()
    assert all(r["flagged"] == "1" for r, m in zip(rows, metal) if m)
