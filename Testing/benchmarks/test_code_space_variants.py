"""benchmarks.code_space writes each narrowed variant as a model file that records its own narrowing."""

import torch

from AnomalyScoutLib.model_file import AnomalyModel
from AnomalyScoutLib.nets.architecture import ArchitectureConfig
from benchmarks.code_space import write_variants

TINY = ArchitectureConfig(32, (16, 16, 8, 8), z_dim=16, w_dim=16, mapping_layers=2, position_frequencies=2)


def test_each_variant_file_holds_the_narrowed_encoder_it_reports(tmp_path):
    source = AnomalyModel.create(TINY, seed=0).save(tmp_path / "source.safetensors", half=True)
    variants = write_variants(source, [1.0, 0.5], tmp_path / "variants")
    reported = sorted((r["offset_scale"], r["single_w"]) for r in variants.values())
    assert reported == [(0.5, False), (0.5, True), (1.0, False), (1.0, True)]
    for path, record in variants.items():
        model = AnomalyModel.load(path, "cpu")
        assert model.metadata["training"]["encoder"]["code_space"] == record
        expected = AnomalyModel.load(source, "cpu").encoder
        expected.constrain(record["offset_scale"], record["single_w"])
        torch.testing.assert_close(model.encoder.out.weight, expected.out.weight, atol=1e-3, rtol=1e-3)
