"""The panel lists AnomalyScout model files only: not the body-part regressor beside them, not other files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from AnomalyScoutModuleLib.model_files import is_model_file, model_files_in

REPO = Path(__file__).resolve().parents[2]


def _safetensors(path: Path, metadata: dict[str, str] | None) -> Path:
    header = json.dumps({} if metadata is None else {"__metadata__": metadata}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def test_the_shipped_model_is_a_model_and_the_shipped_regressor_is_not():
    assert is_model_file(REPO / "models" / "default.safetensors")
    assert not is_model_file(REPO / "models" / "position.safetensors")
    listed = model_files_in([REPO / "models"])
    assert REPO / "models" / "default.safetensors" in listed
    assert (
        all(is_model_file(path) for path in listed) and REPO / "models" / "position.safetensors" not in listed
    )


def test_files_that_are_not_models_are_left_out_without_an_error(tmp_path):
    model = _safetensors(tmp_path / "b-model.safetensors", {"anomalyscout": "{}"})
    other = _safetensors(tmp_path / "a-other.safetensors", {"something_else": "{}"})
    bare = _safetensors(tmp_path / "c-bare.safetensors", None)
    (tmp_path / "d-truncated.safetensors").write_bytes(b"\x01\x02")
    (tmp_path / "e-text.safetensors").write_text("not a safetensors file at all")
    huge = tmp_path / "f-huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    assert model_files_in([tmp_path, tmp_path / "missing"]) == [model]
    assert not any(is_model_file(p) for p in (other, bare, huge, tmp_path / "missing.safetensors"))
