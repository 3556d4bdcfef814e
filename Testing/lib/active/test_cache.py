"""The score cache: hits on the same content and model, misses on changed content or another model."""

from __future__ import annotations

import numpy as np
import pytest

from AnomalyScoutLib.active.cache import ScoreCache, content_hash
from AnomalyScoutLib.errors import UnreadableVolumeError


def test_content_hash_follows_content_not_name(tmp_path, make_case):
    first = make_case("a", [0.1, 0.2])
    copy = tmp_path / "copy.npy"
    copy.write_bytes(open(first, "rb").read())
    assert content_hash(first) == content_hash(copy)
    assert content_hash(first) != content_hash(make_case("b", [0.1, 0.3]))


def test_content_hash_of_a_folder_covers_every_file_and_its_name(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"one")
    (series / "2.dcm").write_bytes(b"two")
    before = content_hash(series)
    (series / "2.dcm").write_bytes(b"TWO")
    assert content_hash(series) != before
    (series / "2.dcm").rename(series / "3.dcm")
    assert content_hash(series) != before


def test_content_hash_of_a_missing_file_is_an_unreadable_volume_error(tmp_path):
    with pytest.raises(UnreadableVolumeError, match="missing"):
        content_hash(tmp_path / "missing.nrrd")


def test_hit_after_put_miss_on_changed_content_or_other_model(tmp_path, make_case, scorer):
    cache = ScoreCache(tmp_path / "cache")
    path = make_case("a", [0.1, 0.7])
    key = ScoreCache.key(content_hash(path), "model-1")
    assert cache.get(key) is None
    cache.put(key, scorer(path))
    hit = cache.get(key)
    np.testing.assert_allclose(hit.slice_scores, [0.1, 0.7])
    np.testing.assert_allclose(hit.latents, scorer(path).latents)
    assert hit.case_percentile == pytest.approx(70.0)
    assert cache.get(ScoreCache.key(content_hash(path), "model-2")) is None
    make_case("a", [0.1, 0.8])  # same path, new content
    assert cache.get(ScoreCache.key(content_hash(path), "model-1")) is None


def test_a_corrupt_entry_is_a_miss_not_an_error(tmp_path):
    cache = ScoreCache(tmp_path)
    (tmp_path / f"{'0' * 64}.npz").write_bytes(b"not a zip")
    assert cache.get("0" * 64) is None
