"""The audio domain's ``encoder.arch=cpc``: 10 ms frames, causality, padding, and an export used without mmssl."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from domains.audio.cpc_encoder import CPCEncoder
from domains.audio.cpc_model import CPCModel, conv_frames
from domains.audio.encoders import AudioEncoderConfig, load_audio_encoder
from tests.mmssl.objectives.cpc_fixtures import TINY_VQ, cpc_encoder, waves

REPO = Path(__file__).resolve().parents[3]


def test_the_papers_strides_give_one_frame_per_10_ms() -> None:
    assert conv_frames(16000, (10, 8, 4, 4, 4), (5, 4, 2, 2, 2)) == 98  # 160 samples a frame, 465 of receptive field
    assert conv_frames(16000 + 160, (10, 8, 4, 4, 4), (5, 4, 2, 2, 2)) == 99
    assert conv_frames(100, (10, 8, 4, 4, 4), (5, 4, 2, 2, 2)) == 0


@pytest.mark.parametrize("context", ["gru", "transformer"])
def test_context_at_t_sees_no_later_frame(context: str) -> None:
    encoder = cpc_encoder(0, context_network=context).eval()
    batch = waves(batch=2)
    changed = batch.units.clone()
    changed[:, 4000:] = torch.randn(2, 4000)  # samples from 0.25 s on: frame 22 ends at sample 3984
    before, after = encoder.encode(batch).hidden, encoder.encode(batch.replace(units=changed)).hidden
    assert before.shape == (2, 48, 32) and encoder.causal
    assert torch.allclose(before[:, :23], after[:, :23], atol=1e-6) and not torch.allclose(
        before[:, 30:], after[:, 30:]
    )


@pytest.mark.parametrize("context", ["gru", "transformer"])
def test_a_padded_row_encodes_as_it_does_alone(context: str) -> None:
    encoder = cpc_encoder(0, context_network=context).eval()
    batch = waves(batch=3, short=3200)  # the last row 0.3 s long: 28 real frames of 48
    padding = encoder.output_padding_mask(batch)
    assert padding.sum(1).tolist() == [0, 0, 48 - 28]
    alone = batch.replace(units=batch.units[2:, :4800], padding_mask=batch.padding_mask[2:, :4800])
    out, features = encoder.encode_with_features(batch)
    alone_out, alone_features = encoder.encode_with_features(alone)
    assert torch.allclose(out.hidden[2, :28], alone_out.hidden[0], atol=1e-5)
    assert features.shape == (3, 48, encoder.feature_dim) and torch.allclose(
        features[2, :28], alone_features[0], atol=1e-5
    )


def test_cpc_refuses_masks_and_layers() -> None:
    with pytest.raises(ValueError, match="encoder.arch=cpc neither masks"):
        cpc_encoder(0).encode(waves(), mask=torch.zeros(4, 48, dtype=torch.bool))


def test_the_model_file_imports_no_mmssl() -> None:
    """``cpc_model.py`` needs torch, transformers and huggingface_hub only, so an export loads without mmssl."""
    tree = ast.parse((REPO / "domains" / "audio" / "cpc_model.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m.split(".")[0] for m in imported} <= {
        "__future__",
        "math",
        "collections",
        "torch",
        "huggingface_hub",
        "transformers",
    }


def test_the_export_round_trips(tmp_path: Path) -> None:
    encoder = cpc_encoder(0, **TINY_VQ).eval()
    encoder.export(tmp_path)
    batch = waves(batch=2)
    expected = encoder.encode(batch).hidden
    context, _, _ = CPCModel.from_pretrained(str(tmp_path)).eval()(batch.units)  # what a user without mmssl runs
    assert torch.allclose(context, expected, atol=1e-6)
    loaded = load_audio_encoder(tmp_path)
    assert isinstance(loaded, CPCEncoder) and loaded.model.quantizer is not None
    assert torch.allclose(loaded.eval().encode(batch).hidden, expected, atol=1e-6)
    fresh = load_audio_encoder(tmp_path, random_init=True).model
    assert not torch.equal(fresh.quantizer.codevectors, encoder.model.quantizer.codevectors)


def test_units_per_crop_counts_the_output_grid() -> None:
    from domains.audio.data import AudioDataConfig

    data = AudioDataConfig(max_seconds=2.0)
    assert AudioEncoderConfig(arch="cpc").units_per_crop(data) == 198
    assert AudioEncoderConfig(arch="wav2vec2").units_per_crop(data) == 99  # 20 ms frames
    assert AudioEncoderConfig(arch="conformer").units_per_crop(AudioDataConfig(stream="fbank", max_seconds=2.0)) == 99
