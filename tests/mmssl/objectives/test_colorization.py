"""Colorization (Zhang et al. 2016): the Lab conversion against reference values, the ab bins, soft encoding,
rebalancing weights and annealed mean written out, the loss formula, a falling loss, exact resume, and the
load-time errors (grey images, the encoder's input, bad values)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domains.image.data import ImageArrays
from domains.image.domain import image_collate, make_processor
from domains.image.encoders import ImageEncoderConfig, build_image_encoder
from domains.image.units import image_batch
from mmssl.config import ConfigError
from mmssl.datasets import prepare
from mmssl.objectives.base import SSLModel
from mmssl.objectives.color_space import (
    annealed_mean,
    gamut_bins,
    lab_to_srgb,
    rebalancing_weights,
    soft_encode,
    srgb_to_lab,
)
from mmssl.objectives.colorization import Colorization, ColorizationConfig, colorization_loss
from mmssl.recipe import load_recipe
from mmssl.registry import DOMAINS
from mmssl.types import Batch, Extra
from tests.fitting import first_last, fit

SIZE, PATCH = 16, 4

# sRGB -> L*a*b* (D65), Bruce Lindbloom's calculator / scikit-image's rgb2lab
REFERENCE_LAB = {
    (1.0, 0.0, 0.0): (53.2408, 80.0925, 67.2032),
    (0.0, 1.0, 0.0): (87.7347, -86.1827, 83.1793),
    (0.0, 0.0, 1.0): (32.2970, 79.1875, -107.8602),
    (1.0, 1.0, 1.0): (100.0, 0.0, 0.0),
    (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),
    (0.5, 0.5, 0.5): (53.3890, 0.0, 0.0),
}


def test_srgb_to_lab_matches_reference_values() -> None:
    rgb = torch.tensor(list(REFERENCE_LAB)).T.reshape(3, 1, -1)  # a 1 x 6 image
    lab = srgb_to_lab(rgb).reshape(3, -1).T
    assert torch.allclose(lab, torch.tensor(list(REFERENCE_LAB.values())), atol=2e-3)


def test_lab_to_srgb_inverts_the_conversion() -> None:
    rgb = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lab_to_srgb(srgb_to_lab(rgb)), rgb, atol=1e-4)


def test_gamut_bins_are_the_grid_points_of_srgb_colours() -> None:
    centres = gamut_bins(10.0)
    assert centres.shape == (261, 2) and bool((centres % 10 == 0).all())
    bins = {tuple(map(int, c)) for c in centres.tolist()}
    assert {(0, 0), (80, 70), (-90, 80), (80, -110)} <= bins  # grey, red, green, blue
    assert (100, 100) not in bins and (-90, -100) not in bins  # outside the sRGB gamut


def test_soft_encoding_written_out() -> None:
    centres = gamut_bins(10.0)
    ab = torch.tensor([[13.0, -26.5]])  # no tie among the 5 nearest bins
    got = soft_encode(ab, centres, neighbours=5, sigma=5.0)[0]
    distance = ((centres - ab) ** 2).sum(1).sqrt()
    nearest = distance.argsort()[:5]
    kernel = torch.exp(-(distance[nearest] ** 2) / (2 * 5.0**2))
    expected = torch.zeros(len(centres))
    expected[nearest] = kernel / kernel.sum()
    assert torch.allclose(got, expected, atol=1e-6) and math.isclose(float(got.sum()), 1.0, rel_tol=1e-6)
    one_hot = soft_encode(ab, centres, neighbours=1, sigma=5.0)[0]
    assert one_hot[nearest[0]] == 1 and one_hot.sum() == 1


def test_rebalancing_weights_written_out() -> None:
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [50.0, 50.0]])
    counts = torch.tensor([70, 20, 10, 0])
    sigma, mix, q = 5.0, 0.5, 4
    p = [c / 100 for c in counts.tolist()]
    kernel = [[math.exp(-((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) / (2 * sigma**2)) for b in centres] for a in centres]
    smoothed = [sum(kernel[i][r] / sum(kernel[k][r] for k in range(q)) * p[r] for r in range(q)) for i in range(q)]
    raw = [1 / ((1 - mix) * s + mix / q) for s in smoothed]
    scale = sum(s * w for s, w in zip(smoothed, raw))
    got = rebalancing_weights(counts, centres, sigma, mix)
    assert torch.allclose(got, torch.tensor([w / scale for w in raw]), atol=1e-5)
    assert float(got[3]) > float(got[0])  # the rare bin weighs more
    assert torch.allclose(rebalancing_weights(counts, centres, sigma, 1.0), torch.ones(4))  # lambda 1: uniform


def test_annealed_mean_written_out() -> None:
    centres = torch.tensor([[0.0, 0.0], [20.0, -10.0], [-30.0, 40.0]])
    logits = torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    z = torch.softmax(logits.flatten(), 0)
    annealed = z ** (1 / 0.38) / (z ** (1 / 0.38)).sum()
    expected = (annealed[:, None] * centres).sum(0)
    assert torch.allclose(annealed_mean(logits, centres, 0.38).flatten(), expected, atol=1e-5)
    assert torch.allclose(annealed_mean(logits, centres, 1.0).flatten(), (z[:, None] * centres).sum(0), atol=1e-5)
    assert torch.allclose(annealed_mean(logits, centres, 1e-3).flatten(), centres[1], atol=1e-3)  # T -> 0: the mode


def test_colorization_loss_written_out() -> None:
    g = torch.Generator().manual_seed(0)
    logits, weights = torch.randn(6, 4, generator=g), torch.rand(6, generator=g) + 0.5
    targets = torch.softmax(torch.randn(6, 4, generator=g), 1)
    expected = (
        sum(
            -weights[n]
            * sum(targets[n, q] * math.log(math.exp(logits[n, q]) / logits[n].exp().sum()) for q in range(4))
            for n in range(6)
        )
        / 6
    )
    assert torch.allclose(colorization_loss(logits, targets, weights), torch.as_tensor(expected), atol=1e-5)


# ----------------------------------------------------------------------------- the objective on a tiny encoder
def colour_images(seed: int, n: int = 8) -> torch.Tensor:
    """``[n, 3, SIZE, SIZE]`` smooth random colour images in [0, 1] (4x4 noise upsampled)."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=SIZE, mode="bilinear", align_corners=False)


def lightness_batch(pixels: torch.Tensor) -> Batch:
    """A batch as the image domain collates ``data.encoder_input=lightness``: ``L*/100`` patch units, sRGB pixels."""
    units = srgb_to_lab(pixels)[:, :1] / 100.0
    return image_batch((units - 0.5) / 0.25, PATCH, **{Extra.PIXELS: pixels})


def build(seed: int, arch: str = "vit", **config: object) -> SSLModel:
    torch.manual_seed(seed)
    cfg = ImageEncoderConfig(
        arch=arch, patch_size=PATCH, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, resnet_width=4
    )
    encoder = build_image_encoder(cfg, (SIZE, SIZE), channels=1)
    return SSLModel(encoder, Colorization(ColorizationConfig(decoder_dim=16, **config), encoder))


def test_forward_is_the_written_out_loss_with_the_running_prior() -> None:
    model = build(0).train()
    pixels = colour_images(1)
    batch = lightness_batch(pixels)
    torch.manual_seed(0)
    out = model(batch)
    objective = model.objective
    logits = objective.predict_logits(model.encoder, batch, (SIZE, SIZE))  # [B, Q, 4, 4]
    ab = F.avg_pool2d(srgb_to_lab(pixels)[:, 1:], 4).permute(0, 2, 3, 1).reshape(-1, 2)
    nearest = torch.cdist(ab, objective.centres).argmin(1)
    counts = torch.bincount(nearest, minlength=len(objective.centres))
    assert torch.equal(objective.bin_counts, counts)  # the prior counted this batch's cells
    weights = rebalancing_weights(counts, objective.centres, 5.0, 0.5)[nearest]
    targets = soft_encode(ab, objective.centres, 5, 5.0)
    expected = colorization_loss(logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1]), targets, weights)
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert 0 <= float(out.logs["bin_accuracy"]) <= 1


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_loss_decreases(arch: str) -> None:
    model = build(0, arch)
    batch = lightness_batch(colour_images(2))
    first, last = first_last(fit(model, batch, steps=40, lr=3e-3))
    assert last < 0.75 * first, (first, last)


def test_colorize_gives_ab_at_the_image_size() -> None:
    model = build(0).eval()
    ab = model.objective.colorize(model.encoder, lightness_batch(colour_images(3)))
    assert ab.shape == (8, 2, SIZE, SIZE) and bool(ab.abs().max() < 120)


def train_steps(model: SSLModel, optimizer: torch.optim.Optimizer, steps: range) -> list[float]:
    losses = []
    for step in steps:
        loss = model(lightness_batch(colour_images(step))).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_resumes_exactly() -> None:
    """The running prior is a buffer: a fresh model loading the checkpoint continues with the same weights."""
    model = build(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_steps(model, optimizer, range(1, 4))
    state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert int(state["objective.bin_counts"].sum()) == 3 * 8 * 16  # 3 batches of 8 images of 4x4 cells
    uninterrupted = train_steps(model, optimizer, range(4, 7))
    resumed = build(5)
    resumed.load_state_dict(state)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-3)
    resumed_optimizer.load_state_dict(opt_state)
    assert train_steps(resumed, resumed_optimizer, range(4, 7)) == uninterrupted
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))


# ----------------------------------------------------------------------------- the image domain's lightness input
def test_lightness_collate_feeds_one_channel() -> None:
    images = (colour_images(4) * 255).round().to(torch.uint8)
    arrays = ImageArrays(images=images, source="test")
    processor = make_processor(arrays, PATCH, lightness_input=True)
    assert len(processor.image_mean) == 1
    rows = [{"image": images[i], "index": i, "label": -1} for i in range(len(images))]
    batch = image_collate(processor, with_labels=False)(rows)
    pixels = images.float() / 255
    expected = (srgb_to_lab(pixels)[:, :1] / 100 - processor.image_mean[0]) / processor.image_std[0]
    assert batch.units.shape == (8, 16, PATCH * PATCH)
    assert torch.allclose(batch.units, image_batch(expected, PATCH).units, atol=1e-5)
    assert torch.equal(batch.extras[Extra.PIXELS], pixels)


# ----------------------------------------------------------------------------- load-time errors
def test_grey_prepared_data_is_refused_at_load_time() -> None:
    prepare("fashion-mnist-small")  # embedded: copied into the test's cache, no download
    message = "needs colour \\(RGB\\) images.*'fashion-mnist-small' is grayscale.*mmssl data prepare skimage-photos"
    with pytest.raises(ConfigError, match=message):
        load_recipe("colorization", ["data.name=fashion-mnist-small"])


def test_grey_numpy_images_are_refused_when_loaded(tiny_images, tmp_path) -> None:
    recipe = load_recipe("colorization", ["data.source=numpy", f"data.path={tiny_images}"])
    with pytest.raises(ValueError, match="needs colour \\(RGB\\) images.*1-channel images.*skimage-photos"):
        DOMAINS.get("image").pretrain_data(recipe, tmp_path, 0, 1)


def test_rgb_encoder_input_is_refused() -> None:
    with pytest.raises(ConfigError, match="set data.encoder_input=lightness"):
        load_recipe("colorization", ["data.encoder_input=image"])


def test_lightness_with_augmented_views_is_refused() -> None:
    with pytest.raises(ConfigError, match="data.encoder_input=lightness.*set data.views=none"):
        load_recipe("colorization", ["data.views=simclr"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("objective.temperature=0", "objective.temperature"),
        ("objective.rebalance_mix=1.5", "objective.rebalance_mix"),
        ("objective.neighbours=0", "objective.neighbours"),
        ("objective.output_stride=0", "objective.output_stride"),
    ],
)
def test_bad_values_name_their_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", "\\.")):
        load_recipe("colorization", [override])


def test_output_stride_must_divide_the_image() -> None:
    model = build(0, output_stride=3)
    with pytest.raises(ValueError, match="objective.output_stride=3 does not divide 16x16"):
        model(lightness_batch(colour_images(0)))


def test_missing_colour_pixels_are_an_error() -> None:
    model = build(0)
    grey = np.zeros((2, 1, SIZE, SIZE), np.float32)
    batch = image_batch(torch.from_numpy(grey), PATCH, **{Extra.PIXELS: torch.from_numpy(grey)})
    with pytest.raises(ValueError, match="needs the colour images"):
        model(batch)
