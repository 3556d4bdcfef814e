"""Segmentation-failure track: does the anomaly score say where a competent liver segmenter fails?

Usage (repository root, niced; the lead reruns it on a new model with ``--model``)::

    nice -n 15 python -m benchmarks.segfail_track [--model models/default.safetensors]

The poster's headline use: a segmentation network trained on normal anatomy fails on unusual slices, and the
anomaly score should say where. Set-up:

- **the segmenter** is MONAI's 2-D U-Net trained with augmentation on the normal training phantoms
  (:mod:`benchmarks.monai_segmenter`; trained here if its checkpoint is missing), on the model grid or, with
  ``--segmenter-resolution 256``, on the phantom's own grid with its masks brought down by area.
  ``normal_dice`` is its mean Dice on the held-out *normal* test cases' slices with enough liver: failures
  should come from anomalies, not from a weak segmenter (the earlier small U-Net reached 0.74 and its
  "failures" were liver tips);
- it segments the phantom track's test slices (anomalous cases and controls, the same slices and caches as
  ``benchmarks.phantom_track``) and the real fixture (``example_ct`` with TotalSegmentator's liver as truth);
- **failure rule**: Dice < ``--failure-dice`` (0.9) on a slice whose true liver covers at least
  ``--min-liver-px`` model pixels (50 px ≈ 4.9 cm² at the phantom's 3.1 mm model pixels; Dice on a few pixels
  of liver tip is noise, not failure). **Error area**: the pixels where prediction and truth disagree
  (false positives + false negatives) on the same liver slices; its Spearman correlation with each score is
  reported too, because a reviewer cares about how much is wrong, not only whether. A second failure rule
  reads it: **an error area above what the segmenter gets wrong on 95 % of the normal cases' liver slices**
  (``failure_auroc_error_area``). The Dice rule calls every small liver tip a failure (a few wrong pixels
  are a large share of a small liver), which no anomaly score should predict; the area rule asks what a
  reviewer asks, "is much more of this slice wrong than on normal anatomy?";
- **scores**, each restricted to the segmentation's own liver mask grown by ``--margin-px`` pixels (what
  ``anomalyscout review`` scores; on a slice where the segmenter found no liver, the whole body): ours
  (``fast``, the product's default), as ``review`` reports it (score over the calibrated threshold at the
  slice's position: the **default score**, whose AUROC is ``failure_auroc``) and raw; the per-position
  intensity atlas, the autoencoder and the coarse-noise denoising autoencoder (Kascenas et al. 2023) with the
  same top-1 % aggregation inside the same region; and ours over the whole slice for reference;
- slices the product's range gate would not score are in no set (as in the phantom track); how many is in the
  results' ``position.range_gate`` and ``real_fixture.range_gate``.

Writes ``benchmarks/results/segfail.json`` and ``docs/benchmarks/segfail_scatter.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from AnomalyScoutLib import metrics
from AnomalyScoutLib.calibration import ATLAS_CALIBRATION_KEY, DENOISER_CALIBRATION_KEY
from AnomalyScoutLib.engine import OPINION_NAMES
from AnomalyScoutLib.inversion import DENOISE_MODE, InversionConfig
from AnomalyScoutLib.scoring import ScoreConfig
from benchmarks import plots
from benchmarks.aggregation import slice_scores
from benchmarks.baselines.atlas import PositionAtlas
from benchmarks.baselines.autoencoder import AutoencoderDetector
from benchmarks.baselines.denoising_autoencoder import DenoisingAutoencoderDetector
from benchmarks.data import SlicePlacer, in_range_only, phantom_split, volume_file_case
from benchmarks.evaluate import paired_case_bootstrap
from benchmarks.generator_runs import generator_run
from benchmarks.head_detector import HeadRun
from benchmarks.monai_segmenter import (
    SegmenterSpec,
    load_segmenter,
    min_liver_px_at,
    predict_liver,
    segment_on_model_grid,
    segmenter_images,
    slice_dice,
    train,
)
from benchmarks.ours import GeneratorDetector
from benchmarks.phantom_track import FAST_NAME, add_data_arguments, baseline_run, phantom_data
from benchmarks.real_track import REAL_CT, REAL_LIVER
from benchmarks.results_io import TrackStart, add_common_arguments, write_json
from benchmarks.slices import CaseInfo, SliceSet

__all__ = [
    "DEFAULT_SCORE",
    "DENOISE_REVIEW_SCORE",
    "REVIEW_RISKS",
    "error_area",
    "failure_metrics",
    "main",
    "review_bootstrap",
    "review_region",
]

#: The row whose AUROC is ``failure_auroc``: what ``anomalyscout review`` reports as risk.
DEFAULT_SCORE = "ours fast, review risk (calibrated, segmentation region)"
#: ``anomalyscout review --mode denoise``'s risk: the denoiser's calibrated score and the atlas's.
DENOISE_REVIEW_SCORE = "ours denoise, review risk (calibrated, segmentation region)"
#: The review risks compared case by case (``review_bootstrap``), the first the reference.
REVIEW_RISKS = (DEFAULT_SCORE, DENOISE_REVIEW_SCORE)


def review_region(predicted: np.ndarray, body: np.ndarray, margin_px: int) -> np.ndarray:
    """Per slice, the predicted liver grown by ``margin_px`` (2-D; the test slices are strided, so the
    product's 3-D margin has no neighbours here); the whole body where nothing was predicted."""
    grown = [
        ndimage.binary_dilation(p, iterations=margin_px) if p.any() and margin_px else p for p in predicted
    ]
    return np.where(predicted.reshape(len(predicted), -1).any(axis=1)[:, None, None], np.stack(grown), body)


def failure_metrics(
    scores: np.ndarray, dice: np.ndarray, error_px: np.ndarray, failure_dice: float, failure_error_px: float
) -> dict[str, Any]:
    """Spearman(score, 1 − Dice), Spearman(score, error area), AUROC / AP of the score for slices with
    Dice below ``failure_dice``, and its AUROC for slices whose error area exceeds ``failure_error_px``."""
    failed = dice < failure_dice
    both = 0 < failed.sum() < failed.size
    failed_by_area = error_px > failure_error_px
    both_by_area = 0 < failed_by_area.sum() < failed_by_area.size

    def spearman(values: np.ndarray) -> float | None:  # undefined (None) when either side is constant
        return metrics.spearman(scores, values) if np.ptp(values) > 0 and np.ptp(scores) > 0 else None

    return {
        "spearman_vs_1_minus_dice": spearman(1.0 - dice),
        "spearman_vs_error_area": spearman(error_px),
        "failure_auroc": metrics.roc_auc(failed, scores) if both else None,
        "failure_ap": metrics.average_precision(failed, scores) if both else None,
        "failure_auroc_error_area": metrics.roc_auc(failed_by_area, scores) if both_by_area else None,
    }


def _segmenter(spec: SegmenterSpec, minutes: float) -> tuple[Any, dict[str, Any]]:
    if not spec.checkpoint.is_file():
        print(f"[segfail] training the segmenter for {minutes:g} min ...", flush=True)
        train(spec, minutes, log=lambda m: print(f"[segfail] {m}", flush=True))
    return load_segmenter(spec)


def _baselines(args: argparse.Namespace) -> tuple[Any, ...]:
    return (
        PositionAtlas(),
        AutoencoderDetector(steps=args.ae_steps, seed=args.seed),
        DenoisingAutoencoderDetector(steps=args.ae_steps, seed=args.seed),
    )


def _region_scores(
    test: SliceSet,
    region: np.ndarray,
    args: argparse.Namespace,
    data_key: str,
    train_set: SliceSet,
    baselines: tuple[Any, ...],
) -> dict[str, np.ndarray]:
    """Ours and each baseline's per-slice score inside ``region`` (and ours over the whole slice too)."""
    detector = GeneratorDetector(FAST_NAME, args.model, InversionConfig(mode="fast"), ScoreConfig())
    fast = generator_run(detector, test, data_key)
    inside = fast.method_run(region=region).detection
    scores: dict[str, np.ndarray] = {}
    if detector.model.head is not None:
        scores.update(_head_region_scores(fast, test, region))
    elif detector.is_calibrated():
        scores[DEFAULT_SCORE] = detector.calibrated(test, inside).slice_scores
    scores["ours fast, raw score, segmentation region"] = inside.slice_scores
    scores["ours fast, whole slice"] = fast.method_run().detection.slice_scores
    for baseline in baselines:
        print(f"[segfail] {baseline.name} ...", flush=True)
        maps = baseline_run(baseline, train_set, test, data_key).detection.maps
        scores[f"{baseline.name}, segmentation region"] = slice_scores(maps, test.body & region)
    return scores


def _head_region_scores(fast: Any, test: SliceSet, region: np.ndarray) -> dict[str, np.ndarray]:
    """A model with an anomaly-map head, as ``review`` scores it: inside the region, each calibrated opinion
    (the head's top-k, the atlas's and the denoiser's scores) over its threshold at the slice's position, at
    the engine's share of the default rate (``VolumeScorer.opinions``), and the largest of them (the
    calibrated exceedance that ``review`` reports as risk); and the same in ``denoise`` mode, where the
    denoiser's score is the model's own."""
    import torch

    from AnomalyScoutLib.engine import VolumeScorer

    model = fast.detector.model
    inside = HeadRun("head", fast).method_run(region=region).detection.slice_scores
    opinions = _second_opinion_scores(model, test, test.body & region)
    scores = {"ours fast (head), raw score, segmentation region": inside}
    scores.update({f"{OPINION_NAMES[key]} (the model's), raw score, segmentation region": value
                   for key, value in opinions.items()})  # fmt: skip
    scorer = VolumeScorer(model, InversionConfig(mode="fast"), ScoreConfig(), torch.device("cpu"))
    fpr = scorer.stored_calibration().default_fpr / scorer.opinions()
    for key, value in opinions.items():
        opinion = scorer.opinion_calibration(key)
        if opinion is not None:
            alone = opinion.apply(value, test.positions, 0.0, fpr).exceedance
            scores[f"{OPINION_NAMES[key]} (the model's), calibrated alone, segmentation region"] = alone
    risks = {DEFAULT_SCORE: _review_risk(scorer, inside, opinions, test.positions)}
    if DENOISER_CALIBRATION_KEY in opinions:
        denoising = VolumeScorer(
            model, InversionConfig(mode=DENOISE_MODE), ScoreConfig(), torch.device("cpu")
        )
        risks[DENOISE_REVIEW_SCORE] = _review_risk(
            denoising, opinions[DENOISER_CALIBRATION_KEY], opinions, test.positions
        )
    scores.update({name: risk for name, risk in risks.items() if risk is not None})
    return scores


def _review_risk(
    scorer: Any, own: np.ndarray, opinions: dict[str, np.ndarray], positions: np.ndarray
) -> np.ndarray | None:
    """``review``'s risk with ``scorer``: its own score and each calibrated second opinion it hears, each
    over its threshold at its share of the rate, the largest; None when its own score is not calibrated."""
    calibration = scorer.mode_calibration()
    if calibration is None:
        return None
    fpr = scorer.stored_calibration().default_fpr / scorer.opinions()
    risk = calibration.apply(own, positions, 0.0, fpr).exceedance
    for key in scorer.second_opinion_keys():
        opinion = scorer.opinion_calibration(key)
        if opinion is not None and key in opinions:
            risk = np.fmax(risk, opinion.apply(opinions[key], positions, 0.0, fpr).exceedance)
    return risk


def _second_opinion_scores(model: Any, test: SliceSet, area: np.ndarray, batch: int = 64) -> dict[str, Any]:
    """The model's atlas and denoiser slice scores inside ``area``, by calibration key, as the engine
    computes them (``CaseScores.second_opinions``)."""
    import torch

    parts: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for i in range(0, len(test), batch):
            images, inside = (torch.from_numpy(a[i : i + batch]) for a in (test.images, area))
            if model.atlas is not None:
                condition = torch.from_numpy(test.condition[i : i + batch])
                parts.setdefault(ATLAS_CALIBRATION_KEY, []).append(
                    model.atlas.slice_scores(images, condition, inside).numpy()
                )
            if model.denoiser is not None:
                parts.setdefault(DENOISER_CALIBRATION_KEY, []).append(
                    model.denoiser.slice_scores(images, inside).float().numpy()
                )
    return {key: np.concatenate(values).astype(np.float64) for key, values in parts.items()}


def _evaluate(
    test: SliceSet,
    predicted: np.ndarray,
    scores: dict[str, np.ndarray],
    groups: dict[str, np.ndarray],
    args: argparse.Namespace,
    failure_error_px: float,
    error_px: np.ndarray | None = None,
) -> dict[str, Any]:
    """Dice, failures (by both rules) and every score's failure metrics per group of slices (``error_px``:
    :func:`error_area` of ``predicted``, when the caller has it already)."""
    dice = slice_dice(predicted, test.organ)
    error_px = error_area(predicted, test.organ) if error_px is None else error_px
    return {
        "dice": {
            name: {
                "mean": float(dice[keep].mean()) if keep.any() else None,
                "failures": int((dice[keep] < args.failure_dice).sum()),
                "failures_by_error_area": int((error_px[keep] > failure_error_px).sum()),
                "slices": int(keep.sum()),
                "mean_error_px": float(error_px[keep].mean()) if keep.any() else None,
            }
            for name, keep in groups.items()
        },
        "scores": {
            name: {
                group: failure_metrics(
                    s[keep], dice[keep], error_px[keep], args.failure_dice, failure_error_px
                )
                for group, keep in groups.items()
                if keep.sum() > 1
            }
            for name, s in scores.items()
        },
        "_dice": dice,
    }


def review_bootstrap(
    case: np.ndarray, failed: np.ndarray, scores: dict[str, np.ndarray], names: tuple[str, ...] = REVIEW_RISKS
) -> dict[str, Any] | None:
    """How much of the difference between ``review``'s risks (``names``, the first the reference) the test
    cases can tell: a paired bootstrap of their failure AUROC, resampling whole cases (``case`` of each
    slice; ``failed`` its failure label). None when fewer than two of ``names`` were scored."""
    names = tuple(name for name in names if name in scores)
    if len(names) < 2:
        return None
    methods = {
        name: {int(c): (failed[case == c], scores[name][case == c]) for c in np.unique(case)}
        for name in names
    }
    group = "liver slices"
    return paired_case_bootstrap(methods, dict.fromkeys(methods[names[0]], group), (group,))


def error_area(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per slice, the pixels where the predicted and the true liver disagree (false positives + negatives)."""
    return (predicted ^ truth).reshape(len(truth), -1).sum(axis=1).astype(np.float64)


def _liver_slices(slices: SliceSet, min_px: int) -> np.ndarray:
    return slices.organ.reshape(len(slices), -1).sum(axis=1) >= min_px


def _segment(
    model: Any,
    spec: SegmenterSpec,
    slices: SliceSet,
    same_grid: SliceSet | None,
    native: Callable[[], SliceSet],
) -> tuple[np.ndarray, np.ndarray | None]:
    """The segmenter's liver masks of ``slices`` on the model grid, and its Dice at its own grid when that is
    finer (else None). ``same_grid``: the unstrided cases on the model grid, where a 2.5-D segmenter on that
    grid finds its neighbours (None: ``slices`` themselves); ``native`` makes them at the segmenter's
    resolution, called only when it differs."""
    if spec.resolution == slices.images.shape[-1]:
        return predict_liver(model, segmenter_images(spec, slices, same_grid)), None
    segmented = segment_on_model_grid(model, spec, slices, native())
    return segmented.model_grid, slice_dice(segmented.native, segmented.native_truth)


def _real_fixture(
    model: Any,
    spec: SegmenterSpec,
    args: argparse.Namespace,
    window: Any,
    train_set: SliceSet,
    placer: SlicePlacer,
    failure_error_px: float,
) -> dict[str, Any]:
    """The segmenter, ours and the atlas on the one real patient, TotalSegmentator's liver as truth (all
    trained on the normal phantoms only); slices placed as the rest of the track, failures by area at the
    phantoms' threshold (model pixels)."""

    def case_at(resolution: int) -> SliceSet:
        info = CaseInfo("example_ct", "normal", 0)
        return volume_file_case(REAL_CT, REAL_LIVER, 1, info, resolution, window, placer)

    real, excluded = in_range_only(case_at(args.resolution))
    print(f"[segfail] real fixture: {excluded.line('real')}", flush=True)
    liver = _liver_slices(real, args.min_liver_px)
    predicted = np.zeros_like(real.organ)
    predicted[liver], native_dice = _segment(
        model, spec, real.subset(liver), real, lambda: case_at(spec.resolution)
    )
    region = review_region(predicted, real.body, args.margin_px)
    # The atlas only: the autoencoders would be trained again for this cache key, CPU minutes not to spare.
    key = placer.data_key(["segfail-real", args.resolution, *excluded.key_parts()])
    scores = _region_scores(real, region, args, key, train_set, (PositionAtlas(),))
    result = _evaluate(real, predicted, scores, {"liver slices": liver}, args, failure_error_px)
    result.pop("_dice")
    return {
        "case": str(REAL_CT.name),
        "truth": f"{REAL_LIVER.name} (TotalSegmentator v1 model output)",
        "dice_at_segmenter_grid": None if native_dice is None else float(native_dice.mean()),
        "range_gate": excluded.as_dict(),
        **result,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "segfail")
    add_data_arguments(parser)
    parser.add_argument("--min-liver-px", type=int, default=50)
    parser.add_argument("--margin-px", type=int, default=3, help="region margin (3 px ≈ review's 10 mm)")
    parser.add_argument("--failure-dice", type=float, default=0.9)
    parser.add_argument(
        "--segmenter-minutes", type=float, default=60.0, help="training budget when no checkpoint exists"
    )
    parser.add_argument(
        "--segmenter-context", type=int, default=0, help="segmenter's neighbouring slices each side (2.5-D)"
    )
    parser.add_argument(
        "--segmenter-resolution",
        type=int,
        default=None,
        help="the segmenter's in-plane grid (default: the model's; 256: the phantom's own, brought down to "
        "the model grid by area)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    track = TrackStart("segfail", args, argv)
    split, train_set, test, data_key, exclusions = phantom_data(args, track.model.window, track.placer)
    track.record_gate(exclusions)
    segmenter_grid = args.segmenter_resolution or args.resolution
    spec = SegmenterSpec(
        resolution=segmenter_grid,
        window=track.model.window,
        min_liver_px=min_liver_px_at(segmenter_grid, args.min_liver_px, args.resolution),
        context=args.segmenter_context,
    )
    segmenter, segmenter_summary = _segmenter(spec, args.segmenter_minutes)
    liver = _liver_slices(test, args.min_liver_px)
    # Only the liver slices are judged, so only they are segmented (half the slices: CPU is scarce).
    predicted = np.zeros_like(test.organ)
    # A 2.5-D segmenter reads each test slice's true neighbours, from the unstrided cases.
    source = None
    if spec.context and spec.resolution == args.resolution:
        source = phantom_split(split, args.resolution, track.model.window, track.placer)[1]
    predicted[liver], native_dice = _segment(
        segmenter,
        spec,
        test.subset(liver),
        source,
        lambda: phantom_split(split, spec.resolution, track.model.window, track.placer)[1],
    )
    region = review_region(predicted, test.body, args.margin_px)
    scores = _region_scores(test, region, args, data_key, train_set, _baselines(args))

    normal_case = test.case_anomaly == "normal"
    groups = {
        "all liver slices": liver,
        "liver slices of anomalous cases": liver & ~normal_case,
        "liver slices of normal cases": liver & normal_case,
    }
    # The area rule's threshold: what the segmenter gets wrong on 95 % of normal anatomy's liver slices.
    error_px = error_area(predicted, test.organ)
    normal_errors = error_px[groups["liver slices of normal cases"]]
    failure_error_px = float(np.percentile(normal_errors, 95)) if normal_errors.size else float("inf")
    evaluation = _evaluate(test, predicted, scores, groups, args, failure_error_px, error_px)
    dice = evaluation.pop("_dice")
    headline = evaluation["scores"].get(DEFAULT_SCORE, {}).get("all liver slices", {})
    results: dict[str, Any] = {
        **track.header(),
        "split": split.as_dict(),
        "settings": {
            "min_liver_px": args.min_liver_px,
            "margin_px": args.margin_px,
            "failure_dice": args.failure_dice,
            "stride": args.stride,
            "resolution": args.resolution,
            "ae_steps": args.ae_steps,
        },
        "failure_rule": (
            f"Dice < {args.failure_dice} on a slice whose true liver covers >= {args.min_liver_px} model "
            "pixels; error area = pixels where prediction and truth disagree; by area: error area > "
            f"{failure_error_px:.0f} px (the 95th percentile of the normal cases' liver slices)"
        ),
        "failure_error_px": failure_error_px,
        "segmenter": {**spec.as_dict(), **segmenter_summary},
        "normal_dice": evaluation["dice"]["liver slices of normal cases"]["mean"],
        # the same slices' Dice where the segmenter works, when that grid is finer than the model's
        "normal_dice_at_segmenter_grid": None
        if native_dice is None
        else float(native_dice[(test.case_anomaly == "normal")[liver]].mean()),
        "default_score": DEFAULT_SCORE,
        "failure_auroc": headline.get("failure_auroc"),
        "failure_ap": headline.get("failure_ap"),
        "failure_auroc_error_area": headline.get("failure_auroc_error_area"),
        "spearman_vs_1_minus_dice": headline.get("spearman_vs_1_minus_dice"),
        "slices_scored": int(liver.sum()),
        # by the area rule, on all liver slices: whether the modes' risks differ more than the cases can tell
        "review_bootstrap_error_area": review_bootstrap(
            test.case[liver], error_px[liver] > failure_error_px, {n: s[liver] for n, s in scores.items()}
        ),
        **evaluation,
        "dice_by_type": {
            kind: float(dice[liver & (test.case_anomaly == kind)].mean())
            for kind in sorted(set(test.case_anomaly))
            if (liver & (test.case_anomaly == kind)).any()
        },
        "real_fixture": _real_fixture(
            segmenter, spec, args, track.model.window, train_set, track.placer, failure_error_px
        ),
    }
    write_json(results, args.out)
    plots.plot_scatter(
        {name: (s[liver], 1.0 - dice[liver]) for name, s in scores.items() if "segmentation region" in name},
        test.labels[liver],
        args.plots / "segfail_scatter.png",
        f"Score in the segmentation region vs segmentation failure ({int(liver.sum())} liver slices)",
    )
    print(
        f"[segfail] normal Dice {results['normal_dice']:.3f}, failure AUROC {results['failure_auroc']} "
        f"(by error area: {results['failure_auroc_error_area']}); "
        f"wrote {args.out} in {time.time() - track.started:.0f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
