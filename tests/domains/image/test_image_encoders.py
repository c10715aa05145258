"""Image encoders: parity with transformers' own ViT forward, MAE subsets, ResNet export round trip."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForImageClassification

from domains.image.encoders import ImageEncoderConfig, ResNetEncoder, ViTEncoder, build_image_encoder
from domains.image.resnet import SmallResNet
from domains.image.units import image_batch, patchify, unpatchify

CFG = ImageEncoderConfig(arch="vit", patch_size=4, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def _vit() -> ViTEncoder:
    torch.manual_seed(0)
    return build_image_encoder(CFG, (16, 16), channels=3).eval()


def test_patchify_round_trip_and_channel_major_order() -> None:
    images = torch.rand(2, 3, 8, 12)
    units = patchify(images, 4)
    assert units.shape == (2, 6, 48)
    torch.testing.assert_close(units[0, 1].view(3, 4, 4), images[0, :, 0:4, 4:8])  # row-major grid, (C, P, P)
    torch.testing.assert_close(unpatchify(units, (2, 3), 4), images)
    with pytest.raises(ValueError, match="patch_size=5"):
        patchify(images, 5)


def test_vit_encode_equals_vit_model_on_pixels() -> None:
    enc = _vit()
    images = torch.rand(3, 3, 16, 16)
    out = enc.encode(image_batch(images, 4), all_layers=True)
    ref = enc.model(pixel_values=images, output_hidden_states=True)
    torch.testing.assert_close(out.hidden, ref.last_hidden_state[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.pooled(), ref.last_hidden_state[:, 0], rtol=1e-5, atol=1e-5)
    assert len(out.layers) == CFG.num_layers + 1
    torch.testing.assert_close(out.layers[1], ref.hidden_states[1][:, 1:], rtol=1e-5, atol=1e-5)


def test_vit_masked_encode_equals_bool_masked_pos() -> None:
    enc = _vit()
    with torch.no_grad():
        enc.model.embeddings.mask_token.normal_()
    images = torch.rand(2, 3, 16, 16)
    mask = torch.rand(2, 16) < 0.5
    out = enc.encode(image_batch(images, 4), mask=mask)
    ref = enc.model(pixel_values=images, bool_masked_pos=mask)
    torch.testing.assert_close(out.hidden, ref.last_hidden_state[:, 1:], rtol=1e-5, atol=1e-5)


def test_vit_other_grid_interpolates_position_embeddings() -> None:
    enc = _vit()
    images = torch.rand(2, 3, 8, 8)  # a multi-crop local view: 2x2 patches instead of 4x4
    out = enc.encode(image_batch(images, 4))
    ref = enc.model(pixel_values=images, interpolate_pos_encoding=True)
    torch.testing.assert_close(out.hidden, ref.last_hidden_state[:, 1:], rtol=1e-5, atol=1e-5)


def test_vit_encode_visible_keeps_positions() -> None:
    enc = _vit()
    images = torch.rand(2, 3, 16, 16)
    batch = image_batch(images, 4)
    visible = torch.stack([torch.randperm(16)[:5] for _ in range(2)])
    out = enc.encode_visible(batch, visible)
    assert out.hidden.shape == (2, 5, 32)
    # the same computation by hand: embed every patch (with its position), keep 5, run the layers
    tokens = enc.embed(batch)
    kept = torch.stack([tokens[i, visible[i]] for i in range(2)])
    cls = enc.model.embeddings.cls_token + enc.model.embeddings.position_embeddings[:, :1]
    x = torch.cat([cls.expand(2, -1, -1), kept], 1)
    for layer in enc.model.layers:
        x = layer(x)
    torch.testing.assert_close(out.hidden, enc.model.layernorm(x)[:, 1:], rtol=1e-5, atol=1e-5)


def test_vit_export_loads_with_auto_classes(tmp_path: Path) -> None:
    enc = _vit()
    enc.export(tmp_path)
    images = torch.rand(2, 3, 16, 16)
    model = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(
        model(pixel_values=images).last_hidden_state[:, 1:],
        enc.encode(image_batch(images, 4)).hidden,
        rtol=1e-5,
        atol=1e-5,
    )
    clf = AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=10)
    assert clf(pixel_values=images).logits.shape == (2, 10)


def test_resnet_encoder_and_hub_mixin_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = build_image_encoder(ImageEncoderConfig(arch="resnet", resnet_width=8), (28, 28), channels=1).eval()
    assert isinstance(enc, ResNetEncoder)
    images = torch.rand(2, 1, 28, 28)
    out = enc.encode(image_batch(images, 4))
    assert out.hidden.shape == (2, 16, 64) and out.pooled().shape == (2, 64)  # 28 -> 14 -> 7 -> 4 cells
    enc.export(tmp_path)
    loaded = SmallResNet.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(images).mean((2, 3)), out.pooled(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="use encoder.arch=vit"):
        enc.encode(image_batch(images, 4), mask=torch.zeros(2, 49, dtype=torch.bool))
