"""Baseline (5): external implementations nobody here wrote: anomalib's from-scratch models.

anomalib needs torchvision and lightning, and PyPI's torchvision does not import beside the project's
pinned torch 2.13.0 CPU build, so anomalib lives in a venv of its own, made by
``benchmarks/setup_anomalib.sh`` (torch 2.14.1 + torchvision 0.29.1 + anomalib 2.7.0). Two halves:

- :class:`AnomalibDetector` (imported by the harness in the project's venv) writes the slices to an
  ``.npz``, runs this file as a script with the other venv's Python and reads maps and scores back;
- :func:`main` (run inside the anomalib venv) writes the slices as 8-bit PNGs (grey replicated to RGB,
  as anomalib expects), trains the model with anomalib's own ``Folder`` data module and ``Engine`` and
  predicts on the test PNGs. No pretrained weights are involved (none can be downloaded here): GANomaly
  and DRAEM train from scratch; DRAEM's anomaly source is Perlin noise (an empty DTD folder, since the
  texture set cannot be downloaded).

Script usage: ``python anomalib_runner.py --model ganomaly --data IN.npz --out OUT.npz --epochs 5``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the script half runs in another venv, where the harness is not importable
    from benchmarks.detectors import Detection
    from benchmarks.slices import SliceSet

__all__ = ["ANOMALIB_PYTHON_ENV", "AnomalibDetector", "AnomalibUnavailable", "main"]

#: Environment variable naming the anomalib venv's Python; default ``/work/bench-venv/bin/python``.
ANOMALIB_PYTHON_ENV = "ANOMALYSCOUT_ANOMALIB_PYTHON"
_DEFAULT_PYTHON = "/work/bench-venv/bin/python"


class AnomalibUnavailable(RuntimeError):
    """The anomalib venv is missing or the external run failed; the message says which and why."""


class AnomalibDetector:
    """Runs an anomalib model in its own venv on the harness's slices.

    Args:
        model: ``"ganomaly"`` (image score only: no pixel map) or ``"draem"`` (pixel maps + image score).
        epochs: Training epochs over the normal training slices (anomalib's Engine ``max_epochs``).
        seed: Passed to lightning's ``seed_everything``.
        python: The anomalib venv's interpreter (default from ``ANOMALYSCOUT_ANOMALIB_PYTHON``).
        timeout_s: The external run is killed after this long.
    """

    def __init__(
        self,
        model: str = "ganomaly",
        epochs: int = 3,
        seed: int = 0,
        python: str | None = None,
        timeout_s: float = 4 * 3600.0,
    ):
        if model not in _MODELS:
            raise ValueError(f"model must be one of {sorted(_MODELS)}, got {model!r}")
        self.name = f"anomalib-{model}"
        self.model = model
        self.epochs = epochs
        self.seed = seed
        self.python = python or os.environ.get(ANOMALIB_PYTHON_ENV, _DEFAULT_PYTHON)
        self.timeout_s = timeout_s
        self._train = None

    def fit(self, train: SliceSet) -> None:
        """Keeps the training slices: anomalib trains and predicts in one external run (:meth:`detect`)."""
        if not Path(self.python).is_file():
            raise AnomalibUnavailable(
                f"no anomalib venv at {self.python} (set {ANOMALIB_PYTHON_ENV} or run "
                "benchmarks/setup_anomalib.sh)"
            )
        self._train = train

    def detect(self, slices: SliceSet) -> Detection:
        """Train + predict in the anomalib venv; maps are 0 outside the body (GANomaly gives none)."""
        from benchmarks.detectors import Detection  # lazily: see the TYPE_CHECKING import above

        if self._train is None:
            raise RuntimeError("fit before detect")
        with tempfile.TemporaryDirectory(prefix="anomalib-") as tmp:
            data, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
            np.savez(data, train=self._train.images, test=slices.images)
            command = [
                self.python,
                __file__,
                "--model",
                self.model,
                "--data",
                str(data),
                "--out",
                str(out),
                "--epochs",
                str(self.epochs),
                "--seed",
                str(self.seed),
            ]
            try:
                run = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s)
            except subprocess.TimeoutExpired as error:
                raise AnomalibUnavailable(f"{self.name} did not finish in {self.timeout_s:.0f} s") from error
            if run.returncode != 0:
                tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-15:])
                raise AnomalibUnavailable(f"{self.name} failed (exit {run.returncode}):\n{tail}")
            with np.load(out) as result:
                maps, scores = result["maps"], result["scores"]
        maps = np.where(slices.body, maps, 0.0).astype(np.float32)
        return Detection(
            maps=maps if self.model != "ganomaly" else None, slice_scores=scores.astype(np.float64)
        )


# Script half: runs inside the anomalib venv (imports nothing from the project).

_MODELS = {"ganomaly": "Ganomaly", "draem": "Draem"}
#: Options that differ from anomalib's defaults, to fit two shared CPU cores: GANomaly at half its default
#: width (32 instead of 64 feature channels: about 4x less compute per image). DRAEM is left as published.
_MODEL_OPTIONS: dict[str, dict[str, int]] = {"ganomaly": {"n_features": 32}, "draem": {}}


def _write_pngs(images: np.ndarray, folder: Path) -> list[Path]:
    """[-1, 1] slices -> 8-bit RGB PNGs named by index (zero-padded so that sorting keeps the order)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        grey = np.clip((image + 1.0) * 127.5, 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.png"
        Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(path)
        paths.append(path)
    return paths


def _build_model(name: str, size: tuple[int, int], work: Path):  # noqa: ANN202 - an anomalib module
    import anomalib.models as models

    cls = getattr(models, _MODELS[name])
    kwargs = {
        "pre_processor": cls.configure_pre_processor(image_size=size),
        "post_processor": False,
        "evaluator": False,
        "visualizer": False,
    }
    kwargs.update(_MODEL_OPTIONS[name])
    if name == "draem":
        empty_dtd = work / "dtd"
        empty_dtd.mkdir()
        kwargs["dtd_dir"] = empty_dtd
    return cls(**kwargs)


def main(argv: list[str] | None = None) -> int:
    """Train an anomalib model on ``train`` slices and write per-slice maps and scores for ``test`` slices."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(_MODELS), required=True)
    parser.add_argument(
        "--data", type=Path, required=True, help="npz with train and test (n, h, w) in [-1, 1]"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="npz written with maps (n, h, w) and scores (n,)"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    torch.set_num_threads(int(os.environ.get("ANOMALYSCOUT_THREADS", "1")))
    seed_everything(args.seed, workers=True)
    with np.load(args.data) as data:
        train, test = data["train"], data["test"]
    size = tuple(test.shape[1:])
    with tempfile.TemporaryDirectory(prefix="anomalib-run-") as tmp:
        work = Path(tmp)
        _write_pngs(train, work / "train" / "good")
        test_paths = _write_pngs(test, work / "test")
        datamodule = Folder(
            name="slices",
            root=work,
            normal_dir="train/good",
            test_split_mode="none",
            val_split_mode="from_train",
            val_split_ratio=0.1,
            train_batch_size=16,
            eval_batch_size=32,
            num_workers=0,
            seed=args.seed,
        )
        model = _build_model(args.model, size, work)
        engine = Engine(
            max_epochs=args.epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            default_root_dir=work / "engine",
        )
        engine.fit(model=model, datamodule=datamodule)
        batches = engine.predict(model=model, data_path=work / "test", return_predictions=True)
        by_path: dict[str, tuple[np.ndarray, float]] = {}
        for batch in batches or []:
            maps = (
                batch.anomaly_map
                if batch.anomaly_map is not None
                else torch.zeros(len(batch.pred_score), *size)
            )
            for path, amap, score in zip(batch.image_path, maps, batch.pred_score):
                by_path[str(Path(path).name)] = (amap.squeeze().float().numpy(), float(score))
        missing = [p.name for p in test_paths if p.name not in by_path]
        if missing:
            print(f"error: anomalib returned no prediction for {len(missing)} test slices", file=sys.stderr)
            return 1
        maps = np.stack([by_path[p.name][0] for p in test_paths]).astype(np.float32)
        scores = np.array([by_path[p.name][1] for p in test_paths])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp.npz")
    np.savez(tmp_out, maps=maps, scores=scores)
    os.replace(tmp_out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
