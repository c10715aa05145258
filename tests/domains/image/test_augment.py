"""Batched per-sample SSL augmentations (domains/image/augment.py ops, domains/image/views.py views).

Each op is compared with ``torchvision.transforms.v2.functional`` applied image by image with
the same parameters. The samplers are checked for per-sample independence, for determinism under
a seed and for their statistics, and the views for shapes, dtypes, ranges and the papers' values.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from domains.image.augment import (
    HUE,
    JitterParams,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    color_jitter,
    gaussian_blur,
    hflip,
    normalize,
    random_grayscale,
    resized_crop,
    rgb_to_grayscale,
    sample_blur_sigma,
    sample_crop_boxes,
    sample_jitter,
    solarize,
)
from domains.image.views import (
    VIEW_PRESETS,
    ViewConfig,
    augment,
    byol_views,
    dino_views,
    fashion_mnist_views,
    make_views,
    simclr_views,
)

CPU = torch.device("cpu")
# Every op switched off, and a crop that always takes the whole (square) image.
IDENTITY = ViewConfig(
    size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0
)
TV_COLOR = {
    "brightness": TF.adjust_brightness,
    "contrast": TF.adjust_contrast,
    "saturation": TF.adjust_saturation,
    "hue": TF.adjust_hue,
}


def _images(b: int, c: int, h: int, w: int, seed: int = 0) -> Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def _assert_rate(mask: Tensor, p: float) -> None:
    """The fraction of True in ``mask`` is ``p`` within 4 binomial standard errors."""
    n = mask.numel()
    assert mask.float().mean().item() == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n) + 1e-9)


# --------------------------------------------------------------------------- parity with torchvision
def test_resized_crop_matches_torchvision() -> None:
    images = _images(4, 3, 20, 24)
    boxes = torch.tensor([[0, 0, 20, 24], [3, 5, 7, 9], [10, 2, 10, 22], [1, 20, 18, 4]])
    flip = torch.tensor([False, True, False, True])
    out = resized_crop(images, boxes, (14, 12), flip)
    for b, (top, left, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(images[b], top, left, h, w, size=[14, 12], antialias=False)
        ref = TF.horizontal_flip(ref) if flip[b] else ref
        # Same bilinear taps at the same points; grid_sample gets its weights through a round trip of
        # the coordinates to [-1, 1] and interpolate from a scale factor, so float32 rounding differs.
        torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=0)


def test_upsampling_crops_also_match_torchvisions_antialiased_default() -> None:
    images = _images(2, 1, 28, 28)
    boxes = torch.tensor([[2, 3, 10, 14], [0, 0, 28, 28]])
    out = resized_crop(images, boxes, 28)
    for b, (top, left, h, w) in enumerate(boxes.tolist()):  # antialiasing only changes shrinking crops
        ref = TF.resized_crop(images[b], top, left, h, w, size=[28, 28])
        torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=0)


def test_hflip_matches_torchvision() -> None:
    images = _images(3, 3, 5, 7)
    out = hflip(images, torch.tensor([True, False, True]))
    assert torch.equal(out[0], TF.horizontal_flip(images[0])) and torch.equal(out[1], images[1])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue])
def test_color_ops_match_torchvision_per_sample(op, channels: int) -> None:
    images = _images(4, channels, 9, 11)
    name = op.__name__.removeprefix("adjust_")
    factors = torch.tensor([-0.3, 0.0, 0.1, 0.5]) if name == "hue" else torch.tensor([0.0, 0.4, 1.0, 1.7])
    out = op(images, factors)
    for b, factor in enumerate(factors.tolist()):
        # Blends agree to float rounding; hue goes back to RGB by the closed form instead of
        # torchvision's six-way gather, which differs by a few ulps.
        torch.testing.assert_close(out[b], TV_COLOR[name](images[b], factor), atol=2e-6, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_applies_each_samples_own_order(channels: int) -> None:
    images = _images(4, channels, 8, 8)
    params = JitterParams(
        brightness=torch.tensor([1.3, 0.6, 1.0, 1.5]),
        contrast=torch.tensor([0.5, 1.4, 1.0, 0.2]),
        saturation=torch.tensor([1.8, 0.3, 1.0, 0.0]),
        hue=torch.tensor([0.2, -0.4, 0.1, 0.3]),
        order=torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]]),
        apply=torch.tensor([True, True, True, False]),
    )
    out = color_jitter(images, params)
    for b in range(3):
        ref = images[b]
        for op in params.order[b].tolist():
            name = list(TV_COLOR)[op]
            ref = TV_COLOR[name](ref, getattr(params, name)[b].item())
        torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=0)
    assert torch.equal(out[3], images[3])  # not applied: bit for bit


def test_color_jitter_without_hue_matches_too() -> None:
    images = _images(2, 3, 6, 6)
    params = dataclasses.replace(sample_jitter(2, 0.8, 0.8, 0.8, 0.0, 1.0, CPU), order=torch.tensor([[3, 2, 0, 1]] * 2))
    assert params.hue is None
    ref = TF.adjust_contrast(
        TF.adjust_brightness(TF.adjust_saturation(images[1], params.saturation[1].item()), params.brightness[1].item()),
        params.contrast[1].item(),
    )
    torch.testing.assert_close(color_jitter(images, params)[1], ref, atol=1e-6, rtol=0)


def test_grayscale_matches_torchvision() -> None:
    images = _images(2, 3, 6, 5)
    out = random_grayscale(images, torch.tensor([True, False]))
    torch.testing.assert_close(out[0], TF.rgb_to_grayscale(images[0], num_output_channels=3), atol=1e-7, rtol=0)
    assert torch.equal(out[1], images[1])
    gray = _images(2, 1, 6, 5)
    assert rgb_to_grayscale(gray) is gray and random_grayscale(gray, torch.tensor([True, True])) is gray


def test_solarize_matches_torchvision() -> None:
    images = _images(2, 3, 6, 6)
    out = solarize(images, torch.tensor([True, False]))
    assert torch.equal(out[0], TF.solarize(images[0], threshold=0.5)) and torch.equal(out[1], images[1])


@pytest.mark.parametrize("kernel_size", [None, (7, 3)])
def test_gaussian_blur_matches_torchvision(kernel_size: tuple[int, int] | None) -> None:
    images = _images(3, 3, 30, 52)
    sigma = torch.tensor([0.5, 1.7, 0.0])
    out = gaussian_blur(images, sigma, kernel_size)
    k_h, k_w = kernel_size or (3, 5)  # 10% of each side, made odd
    for b in range(2):
        ref = TF.gaussian_blur(images[b], kernel_size=[k_w, k_h], sigma=[sigma[b].item()] * 2)
        # Separable passes instead of one 2-D kernel: the same sums, in another order.
        torch.testing.assert_close(out[b], ref, atol=1e-6, rtol=0)
    assert torch.equal(out[2], images[2])  # sigma 0: delta kernel, exactly unchanged
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(images, sigma, (4, 3))


def test_normalize_matches_torchvision() -> None:
    images = _images(2, 3, 4, 4)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    torch.testing.assert_close(normalize(images, mean, std)[1], TF.normalize(images[1], list(mean), list(std)))
    with pytest.raises(ValueError, match="3-channel"):
        normalize(images, (0.5,), (0.2,))


# --------------------------------------------------------------------------- samplers
def test_crop_boxes_fit_and_cover_the_scale_range() -> None:
    torch.manual_seed(0)
    boxes = sample_crop_boxes(10_000, 224, 224, (0.08, 1.0), (3 / 4, 4 / 3), CPU)
    top, left, h, w = boxes.T
    assert boxes.dtype == torch.long and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 224).all() and (left + w <= 224).all()
    area = (h * w).float() / 224**2
    slack = 0.003  # rounding h and w to whole pixels moves the area by at most (h + w) / 2 pixels
    assert area.min() >= 0.08 - slack and area.max() <= 1.0
    assert area.mean().item() == pytest.approx(0.5, abs=0.02)  # U(0.08, 1) minus the draws that do not fit
    log_ratio = (w.float() / h).log()
    assert log_ratio.abs().max() <= math.log(4 / 3) + 0.03
    assert ((left.float() + 0.5) / (225 - w).float()).mean().item() == pytest.approx(0.5, abs=0.01)


def test_crop_boxes_follow_torchvisions_distribution_and_fallback() -> None:
    torch.manual_seed(0)
    ours = sample_crop_boxes(3000, 40, 60, (0.3, 1.0), (0.5, 2.0), CPU)
    rrc = T.RandomResizedCrop(10, scale=(0.3, 1.0), ratio=(0.5, 2.0))
    theirs = torch.tensor([list(rrc.make_params([torch.empty(1, 40, 60)]).values()) for _ in range(3000)])
    for column in range(4):  # mean top, left, height, width: within ~4 standard errors of each other
        a, b = ours[:, column].float(), theirs[:, column].float()
        assert a.mean().item() == pytest.approx(b.mean().item(), abs=4 * math.sqrt(2 * b.var().item() / 3000))
    # No 20x20 square fits in a 10x40 image: torchvision's central crop of the ratio-clipped image.
    fallback = T.RandomResizedCrop(5, scale=(1.0, 1.0), ratio=(1.0, 1.0)).make_params([torch.empty(1, 10, 40)])
    assert sample_crop_boxes(3, 10, 40, (1.0, 1.0), (1.0, 1.0), CPU).tolist() == [list(fallback.values())] * 3


def test_jitter_parameters() -> None:
    torch.manual_seed(0)
    params = sample_jitter(10_000, 0.4, 0.4, 0.2, 0.1, 0.8, CPU)
    for name, low, high in (
        ("brightness", 0.6, 1.4),
        ("contrast", 0.6, 1.4),
        ("saturation", 0.8, 1.2),
        ("hue", -0.1, 0.1),
    ):
        values = getattr(params, name)
        assert low <= values.min() and values.max() <= high and values.std() > (high - low) / 4, name
    assert torch.equal(params.order.sort(dim=1).values, torch.arange(4).expand(10_000, 4))
    assert len(set(map(tuple, params.order.tolist()))) == 24  # every order occurs
    _assert_rate(params.order[:, 0] == HUE, 0.25)
    _assert_rate(params.apply, 0.8)
    assert sample_jitter(4, 1.5, 0.0, 0.0, 0.0, 1.0, CPU).brightness.min() >= 0  # factors are never negative


def test_blur_sigma_rate_and_range() -> None:
    torch.manual_seed(0)
    sigma = sample_blur_sigma(10_000, 0.5, (0.1, 2.0), CPU)
    _assert_rate(sigma > 0, 0.5)
    assert sigma[sigma > 0].min() >= 0.1 and sigma.max() <= 2.0
    assert blur_kernel_size(224) == 23 and blur_kernel_size(96) == 9 and blur_kernel_size(28) == 3


@pytest.mark.parametrize(("field", "p"), [("flip_p", 0.3), ("grayscale_p", 0.2), ("solarize_p", 0.6)])
def test_view_ops_fire_at_their_rate(field: str, p: float) -> None:
    torch.manual_seed(0)
    images = torch.linspace(0.55, 0.95, 8).expand(10_000, 3, 8, 8).clone()  # bright left-to-right ramp
    images[:, 1] *= 0.5  # a colour, so that grayscale shows
    out = augment(images, dataclasses.replace(IDENTITY, size=8, **{field: p}))
    fired = {
        "flip_p": out[:, 0, 0, 0] > out[:, 0, 0, -1],
        "grayscale_p": (out[:, 0] == out[:, 1]).all(dim=(1, 2)),
        "solarize_p": out[:, 0, 0, -1] < 0.5,
    }[field]
    _assert_rate(fired, p)


# --------------------------------------------------------------------------- views
def test_identical_images_get_independent_views() -> None:
    torch.manual_seed(0)
    images = _images(1, 3, 32, 32).expand(16, 3, 32, 32)
    for view in make_views(images, byol_views(size=24)):
        flat = view.flatten(1)
        assert (torch.cdist(flat, flat) + torch.eye(16)).min() > 1e-3  # no two samples alike


def test_views_are_deterministic_under_a_seed() -> None:
    images = _images(8, 3, 24, 24)
    configs = dino_views(n_local=2, size=16, local_size=8)

    def run(seed: int) -> list[Tensor]:
        torch.manual_seed(seed)
        return make_views(images, configs)

    assert all(torch.equal(a, b) for a, b in zip(run(0), run(0)))
    assert not any(torch.equal(a, b) for a, b in zip(run(0), run(1)))
    state = torch.random.get_rng_state()
    first = make_views(images, configs, torch.Generator().manual_seed(3))
    second = make_views(images, configs, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert torch.equal(torch.random.get_rng_state(), state)  # an explicit generator leaves the global RNG alone


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_dtypes_and_range(channels: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    images = _images(4, channels, 20, 20).to(dtype)
    views = make_views(images, (*byol_views(size=16), ViewConfig(size=8, scale=(0.05, 0.4))))
    assert [tuple(v.shape) for v in views] == [(4, channels, 16, 16)] * 2 + [(4, channels, 8, 8)]
    assert all(v.dtype == dtype and v.min() >= 0 and v.max() <= 1 and v.isfinite().all() for v in views)
    if channels == 1:  # grayscale stays one channel; saturation, hue and grayscale do nothing to it
        assert views[0].shape[1] == 1


def test_normalisation_is_last() -> None:
    images = _images(3, 3, 16, 16)
    torch.manual_seed(0)
    plain = augment(images, byol_views(size=16)[1])
    torch.manual_seed(0)
    normed = augment(images, dataclasses.replace(byol_views(size=16)[1], mean=(0.5,) * 3, std=(0.25,) * 3))
    torch.testing.assert_close(normed, (plain - 0.5) / 0.25)


@pytest.mark.parametrize("channels", [1, 3])
def test_disabled_ops_are_the_identity(channels: int) -> None:
    images = _images(5, channels, 16, 16)
    torch.testing.assert_close(augment(images, IDENTITY), images, atol=1e-6, rtol=0)  # resampled at pixel centres
    params = sample_jitter(5, 0.8, 0.8, 0.8, 0.2, 0.0, CPU)
    assert torch.equal(color_jitter(images, params), images)
    assert torch.equal(solarize(images, torch.zeros(5, dtype=torch.bool)), images)


def test_multi_crop_views() -> None:
    torch.manual_seed(0)
    images = _images(4, 3, 32, 32)
    views = make_views(images, dino_views(n_local=3, size=24, local_size=12))
    assert [v.shape[-1] for v in views] == [24, 24, 12, 12, 12] and all(v.shape[0] == 4 for v in views)
    assert not torch.equal(views[2], views[3])  # local crops augmented in one batch, each with its own draws
    with pytest.raises(ValueError, match="at least one"):
        make_views(images, [])


def test_bad_images_are_rejected() -> None:
    with pytest.raises(TypeError, match="uint8"):
        augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), IDENTITY)
    for shape in [(3, 8, 8), (2, 2, 8, 8)]:
        with pytest.raises(ValueError, match="C = 1 or 3"):
            augment(torch.zeros(shape), IDENTITY)


# --------------------------------------------------------------------------- config and presets
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", 0),
        ("size", 2.5),
        ("scale", (0.0, 1.0)),
        ("scale", (0.5, 0.2)),
        ("scale", (0.1, 1.2)),
        ("ratio", (1.0,)),
        ("flip_p", 1.5),
        ("jitter_p", -0.1),
        ("brightness", -1.0),
        ("hue", 0.6),
        ("blur_sigma", 2.0),
        ("solarize_p", True),
        ("mean", (0.5,)),
        ("std", (0.0,)),
    ],
)
def test_view_config_rejects_bad_values_by_name(field: str, value: object) -> None:
    extra = {"mean": (0.5,)} if field == "std" else {}
    with pytest.raises(ValueError, match=f"ViewConfig.{field}"):
        ViewConfig(**{field: value, **extra})


def test_view_config_takes_lists_and_stays_hashable() -> None:
    config = ViewConfig(scale=[0.2, 1], mean=[0.5], std=[0.25])
    assert config.scale == (0.2, 1.0) and config == ViewConfig(scale=(0.2, 1.0), mean=(0.5,), std=(0.25,))
    assert len({config, ViewConfig(scale=(0.2, 1.0), mean=(0.5,), std=(0.25,))}) == 1


def test_presets_follow_the_papers() -> None:
    simclr = simclr_views(strength=0.5)[0]
    assert (simclr.brightness, simclr.contrast, simclr.saturation, simclr.hue) == (0.4, 0.4, 0.4, 0.1)
    assert (simclr.scale, simclr.jitter_p, simclr.grayscale_p, simclr.blur_p) == ((0.08, 1.0), 0.8, 0.2, 0.5)
    first, second = byol_views()
    assert (first.blur_p, second.blur_p, first.solarize_p, second.solarize_p) == (1.0, 0.1, 0.0, 0.2)
    assert (first.brightness, first.contrast, first.saturation, first.hue) == (0.4, 0.4, 0.2, 0.1)
    dino = dino_views()
    assert len(dino) == 10 and dino[0].scale == (0.4, 1.0) and dino[2].size == 96 and dino[2].scale == (0.05, 0.4)
    fmnist = fashion_mnist_views()[0]
    assert fmnist.size == 28 and fmnist.blur_p == 0 and fmnist.solarize_p == 0 and fmnist.scale == (0.2, 1.0)
    assert set(VIEW_PRESETS) == {"simclr", "mocov2", "byol", "dino", "fashion-mnist"}


# --------------------------------------------------------------------------- device
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_views_stay_on_the_gpu_and_match_the_cpu_ops() -> None:
    images = _images(8, 3, 32, 32)
    gpu = images.cuda()
    views = make_views(gpu, byol_views(size=24), torch.Generator(device="cuda").manual_seed(0))
    assert all(v.device == gpu.device for v in views)
    again = make_views(gpu, byol_views(size=24), torch.Generator(device="cuda").manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    params = sample_jitter(8, 0.4, 0.4, 0.2, 0.1, 1.0, CPU)
    on_gpu = JitterParams(**{k: v.cuda() for k, v in vars(params).items()})
    torch.testing.assert_close(color_jitter(gpu, on_gpu).cpu(), color_jitter(images, params), atol=1e-5, rtol=0)
    boxes = sample_crop_boxes(8, 32, 32, (0.08, 1.0), (0.75, 4 / 3), gpu.device)
    assert boxes.device == gpu.device
    torch.testing.assert_close(
        resized_crop(gpu, boxes, 24).cpu(), resized_crop(images, boxes.cpu(), 24), atol=1e-5, rtol=0
    )
