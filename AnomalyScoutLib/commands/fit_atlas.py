"""``anomalyscout fit-atlas``: put a per-position intensity atlas into a model file.

    anomalyscout fit-atlas --model MODEL.safetensors --data TRAINING_NORMALS --out NEW.safetensors

The atlas (:mod:`AnomalyScoutLib.position_atlas`) is the mean and spread of every model-grid pixel per
position bin over normal slices, a second opinion beside the reconstruction. Fit it on the normal volumes
the model was *trained* on, never on those that calibrate it, then run ``anomalyscout calibrate``: until
then scoring uses the reconstruction's score alone and says so. Slices are placed as ``score`` places them
(by anatomy when the model holds a body-part regressor) and only slices in the model's range count. The
networks, their precision and the other calibrations are kept (the atlas's own, if any, is dropped: it
belonged to the old atlas); the model id changes because the file's tensors changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from AnomalyScoutLib.cli import add_command_parser

__all__ = ["fit_atlas", "register", "run"]

#: Slices resampled to the model grid at a time (bounded memory for large CT).
CHUNK = 32


def fit_atlas(model: Any, volumes: Any, config: Any, progress: Any = None) -> tuple[Any, int]:
    """The atlas of ``volumes`` (an iterable of :class:`~AnomalyScoutLib.io.volume.Volume`) on ``model``'s
    grid, window and placement, and how many volumes had a slice in the model's range."""
    import numpy as np
    import torch

    from AnomalyScoutLib.io.geometry import axial_frame, to_canonical
    from AnomalyScoutLib.position.placement import place_and_gate, resolve_method
    from AnomalyScoutLib.position_atlas import AtlasAccumulator
    from AnomalyScoutLib.preprocessing import model_grid

    method = resolve_method("auto", model.position_regressor)
    accumulator = AtlasAccumulator(config, model.resolution)
    used = 0
    for volume in progress(volumes) if progress else volumes:
        frame = axial_frame(volume)
        canonical = to_canonical(volume.array_zyx, frame)
        placement, gate = place_and_gate(canonical, frame.spacing_kji, model.position_regressor, method)
        inside = np.flatnonzero(gate.in_range)
        if inside.size == 0:
            continue
        used += 1
        grid = model_grid(canonical.shape[1:], frame.spacing_kji[1:], model.resolution)
        for start in range(0, inside.size, CHUNK):
            k = inside[start : start + CHUNK]
            hu = torch.from_numpy(np.asarray(canonical[k], dtype=np.float32))
            x = grid.to_model(model.window.normalize(hu))
            accumulator.add(x, torch.from_numpy(placement.positions[k].astype(np.float32)))
    return accumulator.atlas(), used


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "fit_atlas",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="model file to start from")
    parser.add_argument(
        "--data", required=True, help="the normal training volumes: a folder, a phantom folder or a list file"
    )
    parser.add_argument("--out", type=Path, required=True, help="model file to write (may be --model)")
    parser.add_argument("--bins", type=int, default=20, help="position bins (default 20)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from AnomalyScoutLib.calibration import ATLAS_CALIBRATION_KEY, Calibration
    from AnomalyScoutLib.errors import ConfigError
    from AnomalyScoutLib.io.volume import read_volume
    from AnomalyScoutLib.model_file import AnomalyModel, stored_in_half
    from AnomalyScoutLib.position_atlas import METADATA_KEY, AtlasConfig
    from AnomalyScoutLib.train.data import list_volumes

    if not args.out.parent.is_dir():
        raise ConfigError(f"--out: folder {args.out.parent} does not exist")
    model = AnomalyModel.load(args.model)
    if model.head is not None and model.head.config.use_atlas:
        raise ConfigError(
            f"{args.model}: its anomaly-map head was trained on this atlas and reads it; a new atlas would "
            "change what the head sees (train the head again with train-head --atlas-input on the new atlas)"
        )
    paths = list_volumes(args.data)
    volumes = (read_volume(path) for path in paths)

    def progress(items: Any) -> Any:
        return tqdm(items, total=len(paths), unit="volume", desc="fitting the atlas", file=sys.stderr)

    atlas, used = fit_atlas(model, volumes, AtlasConfig(bins=args.bins), progress)
    if used == 0:
        raise ConfigError(
            f"none of the {len(paths)} volume(s) in {args.data} has a slice in the model's range"
        )
    model.atlas = atlas
    model.metadata[METADATA_KEY] = atlas.metadata(used)
    stored = Calibration.from_json(model.calibration)
    if ATLAS_CALIBRATION_KEY in stored.modes:
        kept = {k: v for k, v in stored.modes.items() if k != ATLAS_CALIBRATION_KEY}
        model.calibration = Calibration(kept, stored.default_fpr).to_json()
    model.save(args.out, half=stored_in_half(args.model))
    print(
        f"wrote {args.out} ({model.model_id}) with a position atlas of {used} volume(s); run "
        "`anomalyscout calibrate` on held-out normals so that scoring uses it",
        file=sys.stderr,
    )
    return 0
