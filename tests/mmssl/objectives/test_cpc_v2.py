"""CPC v2 on unit grids: crops, the masked-conv context's causality, learning, resume, recipe checks."""

from __future__ import annotations

import copy

import pytest
import torch

from domains.image.units import image_batch, patchify
from mmssl.config import ConfigError
from mmssl.objectives.base import SSLModel
from mmssl.objectives.cpc_v2 import CPCV2, CPCV2Config, MaskedConvContext, crops_of
from mmssl.recipe import load_recipe
from tests.mmssl.objectives.view_fixtures import PATCH, smooth_images, vit


def test_crops_are_the_patches_of_overlapping_sub_images() -> None:
    """Crop ``(i, j)`` of side 2 units at stride 1 holds the units of the image region rows ``4i..4i+8`` (4-px units)."""
    images = torch.randn(2, 1, 16, 16)
    units = patchify(images, PATCH)  # [2, 16, 16]: a 4x4 unit grid
    crops = crops_of(units, (4, 4), size=2, stride=1)  # [2 * 3 * 3, 4, 16]
    assert crops.shape == (18, 4, 16)
    expected = patchify(images[1:, :, 4:12, 8:16], PATCH)[0]  # image 1, crop row 1, crop column 2
    assert torch.equal(crops[9 + 1 * 3 + 2], expected)


def test_the_context_sees_only_rows_at_and_above() -> None:
    torch.manual_seed(0)
    context = MaskedConvContext(dim=3, layers=3, kernel=3)
    z = torch.randn(1, 3, 6, 5)
    changed = z.clone()
    changed[:, :, 3:] += 1.0  # rows 3 and below
    a, b = context(z), context(changed)
    assert torch.equal(a[:, :, :3], b[:, :, :3]) and not torch.allclose(a[:, :, 3], b[:, :, 3])


def build(seed: int) -> SSLModel:
    encoder = vit(seed)
    torch.manual_seed(seed + 1)
    return SSLModel(encoder, CPCV2(CPCV2Config(prediction_steps=2, num_negatives=8, context_layers=2), encoder))


def test_cpc_v2_learns_from_crops_encoded_alone() -> None:
    model = build(0)
    batch = image_batch(smooth_images(0), PATCH)  # 16x16 images: 4x4 units, a 3x3 crop grid
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        torch.manual_seed(0)
        out = model(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
    z, _ = model.objective.encode_crops(model.encoder, batch)
    alone = model.encoder.encode(image_batch(smooth_images(0)[:1, :, 4:12, 0:8], PATCH)).pooled()
    assert torch.allclose(z[0, 1, 0], alone[0], atol=1e-5)  # crop (1, 0) of image 0 encoded by itself


def test_cpc_v2_resumes_exactly() -> None:
    model = build(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def steps(m: SSLModel, opt: torch.optim.Optimizer, seeds: range) -> list[float]:
        out = []
        for seed in seeds:
            torch.manual_seed(seed)
            loss = m(image_batch(smooth_images(seed), PATCH)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    steps(model, optimizer, range(3))
    state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert "objective.context.convs.0.weight" in state
    uninterrupted = steps(model, optimizer, range(3, 6))
    resumed = build(5)
    resumed.load_state_dict(state)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-3)
    resumed_optimizer.load_state_dict(opt_state)
    assert steps(resumed, resumed_optimizer, range(3, 6)) == uninterrupted


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["objective.crop_units=8"], "objective.crop_units=8 does not fit the 7x7 unit grid"),
        (["objective.prediction_steps=6"], "objective.prediction_steps=6 reaches past the 6 units"),
        (["objective.negatives=sequence"], "objective.num_negatives=64 exceeds the 35 other units"),
        (["objective.context_kernel=0"], "objective.crop_units, crop_stride, context_layers and context_kernel"),
    ],
)
def test_recipe_load_refuses(overrides: list[str], match: str) -> None:
    """Where the image size is known without reading the data (images resized to 28x28: a 7x7 unit grid)."""
    resized = ["data.source=imagefolder", "data.path=unread", "data.image_size=28"]
    with pytest.raises(ConfigError, match=match):
        load_recipe("cpc_image", [*resized, *overrides])
    load_recipe("cpc_image", resized)  # the recipe's own settings fit


def test_too_few_crops_in_a_batch_for_the_negatives() -> None:
    encoder = vit(0)
    model = SSLModel(encoder, CPCV2(CPCV2Config(prediction_steps=2, num_negatives=40), encoder))
    with pytest.raises(ValueError, match="objective.num_negatives=40 exceeds the 17 other units"):
        model(image_batch(smooth_images(0)[:2], PATCH))  # 2 images of 3x3 crops
