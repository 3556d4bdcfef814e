"""The product track's case bootstrap: paired intervals of the mean AUROC over types, cases resampled."""

from __future__ import annotations

import numpy as np

from benchmarks.product_track import case_bootstrap

TYPES = ("tumour", "blob")


def _rows(seed: int, separation: float) -> list[dict]:
    """Three cases per type and three controls of 10 slices; anomalous slices score ``separation`` higher."""
    rng = np.random.default_rng(seed)
    rows = []
    for b, kind in enumerate((*TYPES, "normal")):
        for case in range(3):
            for k in range(10):
                anomalous = kind != "normal" and k < 4
                score = float(rng.normal() + separation * anomalous)
                rows.append({"case": 100 * b + case, "kind": kind, "in_range": True, "anomalous": anomalous,
                             "percentile": score, "score": score})  # fmt: skip
    return rows


def test_the_intervals_separate_a_good_model_from_chance_and_pair_the_same_cases():
    good, chance = _rows(0, 3.0), _rows(1, 0.0)
    result = case_bootstrap({"good": good, "chance": chance, "good again": good}, TYPES, n_resamples=200)
    low, high = result["mean_type_auroc_ci95"]["good"]
    assert 0.9 < low <= high <= 1.0
    chance_low, chance_high = result["mean_type_auroc_ci95"]["chance"]
    assert chance_low < 0.5 < chance_high
    assert result["difference_from_first_ci95"]["chance"][1] < 0  # clearly worse than the first
    assert result["difference_from_first_ci95"]["good again"] == [0.0, 0.0]  # the same cases each time


def test_case_slices_group_a_harness_methods_scores_by_case():
    from benchmarks.evaluate import case_slices
    from benchmarks.slices import CaseInfo, SliceSet

    n = 6
    truth = np.zeros((n, 4, 4), dtype=bool)
    truth[1, 1, 1] = True
    slices = SliceSet(np.zeros((n, 4, 4), np.float32), np.linspace(0, 1, n).astype(np.float32),
                      np.ones((n, 4, 4), bool), truth, np.zeros((n, 4, 4), bool),
                      np.array([0, 0, 0, 1, 1, 1]), np.arange(n),
                      (CaseInfo("blob-0", "blob", 0), CaseInfo("normal-1", "normal", 1)))  # fmt: skip
    grouped = case_slices(slices, np.arange(n, dtype=float))
    assert sorted(grouped) == [0, 1]
    np.testing.assert_array_equal(grouped[0][0], [False, True, False])
    np.testing.assert_array_equal(grouped[1][1], [3.0, 4.0, 5.0])


def test_the_results_header_times_the_whole_run(tiny_model_file, tmp_path, monkeypatch):
    import json
    import time as real_time

    from benchmarks import product_track, results_io

    clock = {"now": 1000.0}

    class _Clock:
        @staticmethod
        def time() -> float:
            return clock["now"]

        gmtime = staticmethod(real_time.gmtime)
        strftime = staticmethod(real_time.strftime)

    def evaluate(scorers, split):
        clock["now"] += 600.0  # the cases take ten minutes
        return {"phantoms": {}}

    monkeypatch.setattr(product_track, "time", _Clock)
    monkeypatch.setattr(results_io, "time", _Clock)
    monkeypatch.setattr(product_track, "evaluate_scorers", evaluate)
    out = tmp_path / "product.json"
    assert product_track.main(["--models", str(tiny_model_file), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["wall_s"] == 600.0


def test_each_precision_asked_for_scores_every_model_under_its_own_name(
    tiny_model_file, tmp_path, monkeypatch
):
    import json

    from benchmarks import product_track

    seen = {}

    def evaluate(scorers, split):
        seen.update({name: scorer.inversion.amp for name, scorer in scorers.items()})
        return {"phantoms": {}}

    monkeypatch.setattr(product_track, "evaluate_scorers", evaluate)
    out = tmp_path / "product.json"
    argv = ["--models", str(tiny_model_file), "--precisions", "fp32", "auto", "--out", str(out)]
    assert product_track.main(argv) == 0
    # fp32 turns autocast off; auto leaves it to the hardware (recorded as what ran)
    assert seen == {f"{tiny_model_file} [fp32]": False, f"{tiny_model_file} [auto]": True}
    precisions = json.loads(out.read_text())["precisions"]
    assert precisions[f"{tiny_model_file} [fp32]"] == "fp32"
    assert precisions[f"{tiny_model_file} [auto]"] in ("bf16", "fp32")
    # one precision: rows are named by the model alone, as before the option
    assert product_track.main(["--models", str(tiny_model_file), "--out", str(out)]) == 0
    assert list(json.loads(out.read_text())["precisions"]) == [str(tiny_model_file)]


def test_each_mode_asked_for_scores_every_model_under_its_own_name(tiny_model_file, tmp_path, monkeypatch):
    import json

    from benchmarks import product_track

    seen = {}

    def evaluate(scorers, split):
        seen.update({name: scorer.inversion.mode for name, scorer in scorers.items()})
        return {"phantoms": {}}

    monkeypatch.setattr(product_track, "evaluate_scorers", evaluate)
    out = tmp_path / "product.json"
    argv = ["--models", str(tiny_model_file), "--modes", "fast", "accurate", "--precisions", "fp32", "auto",
            "--out", str(out)]  # fmt: skip
    assert product_track.main(argv) == 0
    expected = {f"{tiny_model_file} [{mode}] [{precision}]": mode
                for mode in ("fast", "accurate") for precision in ("fp32", "auto")}  # fmt: skip
    assert seen == expected and json.loads(out.read_text())["modes"] == expected
