"""Batched SSL image augmentations in which every sample gets its own random parameters.

torchvision's transforms draw one set of parameters per call, so on a ``[B, C, H, W]`` batch they
crop, flip and jitter every image the same way, and much of the variation that contrastive and
bootstrap methods learn from is lost. Here each op is a pure function of the batch and per-sample
parameter tensors, with a ``sample_*`` function that draws those parameters. Everything is
vectorised torch on the batch's device, with no per-image Python loop and no PIL. The random
numbers come from torch's global RNG (which the trainer seeds every step) or from an explicit
``torch.Generator`` on the batch's device.

A view (Chen et al. 2020, SimCLR; Grill et al. 2020, BYOL) applies these ops in order: a random
resized crop with a horizontal flip, done in one bilinear resampling; colour jitter; random
grayscale; Gaussian blur; solarize; and normalisation. :mod:`domains.image.views` holds the
settings of a view (``ViewConfig``), applies them (``augment``, ``make_views``: one view per config,
for a pair or for DINO-style multi-crop) and the papers' presets. Images are floats in ``[0, 1]`` with 1 (grayscale) or 3 (RGB) channels; saturation,
hue and grayscale leave 1-channel images unchanged.

Each op matches its ``torchvision.transforms.v2.functional`` counterpart at the same parameters
(see the tests). The pipeline differs from torchvision's transforms in two ways:

* colour jitter applies its four ops in a random order drawn for each sample, as the TensorFlow
  SimCLR code does, where ``ColorJitter`` draws one order per call;
* crops are resized bilinearly without antialiasing (``antialias=False``), as in the TensorFlow
  SimCLR/BYOL pipelines, which is a difference only for crops that get shrunk (BYOL and DINO
  resize bicubically).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN = (0.2860,)  # over the 60k training images
FASHION_MNIST_STD = (0.3530,)
SOLARIZE_THRESHOLD = 0.5  # BYOL: x -> 1 - x where x >= 0.5; solarize() relies on it being 0.5
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as in torchvision and PIL
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # colour-jitter op ids, see JitterParams.order


def check_images(images: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape [B, C, H, W] with C = 1 or 3, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"expected float images in [0, 1], got dtype {images.dtype} (uint8: images.float() / 255)")


def sample_bernoulli(n: int, p: float, device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, device=device, generator=generator) < p


def _uniform(
    shape: tuple[int, ...], low: float, high: float, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    return torch.rand(shape, device=device, generator=generator) * (high - low) + low


def _per_sample(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _select(mask: Tensor, if_true: Tensor, if_false: Tensor) -> Tensor:
    """``torch.where`` over samples (``mask``: ``[B]`` bool), as a lerp with weights 0 and 1.

    That picks bit for bit (``lerp`` returns ``start`` at weight 0 and ``end`` at weight 1) and is
    several times faster on CPU than a ``where`` whose condition is broadcast over the pixels.
    """
    return torch.lerp(if_false, if_true, _per_sample(mask).to(if_false.dtype))


# --------------------------------------------------------------------------- crop and flip
def _fallback_crop(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's central-crop fallback size when no attempt fits: the image clipped to ``ratio``."""
    if width / height < ratio[0]:
        return round(width / ratio[0]), width
    if width / height > ratio[1]:
        return height, round(height * ratio[1])
    return height, width


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device,
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> Tensor:
    """Crop boxes distributed like ``torchvision.transforms.v2.RandomResizedCrop``, one per sample.

    Each sample makes ``attempts`` draws at once (area fraction uniform in ``scale``, log aspect
    ratio uniform in ``log(ratio)``) and keeps the first that fits in the image. A sample with no
    fitting draw gets torchvision's central fallback crop.

    Returns:
        ``[n, 4]`` long tensor of ``(top, left, height, width)`` in pixels.
    """
    area = _uniform((n, attempts), scale[0], scale[1], device, generator) * (height * width)
    aspect = _uniform((n, attempts), math.log(ratio[0]), math.log(ratio[1]), device, generator).exp()
    w = (area * aspect).sqrt().round()
    h = (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # argmax returns the first maximal index
    found = fits.any(dim=1)
    fallback_h, fallback_w = _fallback_crop(height, width, ratio)
    h = torch.where(found, h.gather(1, first).squeeze(1), fallback_h)
    w = torch.where(found, w.gather(1, first).squeeze(1), fallback_w)
    u = torch.rand(2, n, device=device, generator=generator)
    top = torch.where(found, torch.minimum((u[0] * (height - h + 1)).floor(), height - h), (height - fallback_h) // 2)
    left = torch.where(found, torch.minimum((u[1] * (width - w + 1)).floor(), width - w), (width - fallback_w) // 2)
    return torch.stack((top, left, h, w), dim=1).long()


def _source_coords(start: Tensor, length: Tensor, out: int) -> Tensor:
    """``[B, out]`` pixel coordinates that bilinear resizing of ``[start, start + length)`` samples.

    ``align_corners=False`` centres, clamped to the crop: exactly what ``F.interpolate`` reads
    when it resizes the cropped image, so pixels next to the crop never leak in.
    """
    t = (torch.arange(out, device=start.device, dtype=torch.float32) + 0.5) / out
    coords = start[:, None] + t * length[:, None] - 0.5
    return torch.minimum(torch.maximum(coords, start[:, None]), (start + length - 1)[:, None])


def resized_crop(images: Tensor, boxes: Tensor, size: int | tuple[int, int], flip: Tensor | None = None) -> Tensor:
    """Crop ``boxes[b]`` out of ``images[b]`` and resize it bilinearly, all samples in one ``grid_sample``.

    The per-sample sampling grid is the axis-aligned affine map from output to crop pixels,
    built directly (not with ``affine_grid``) so that it can be clamped to the crop edges. The
    result equals ``torchvision.transforms.v2.functional.resized_crop(..., antialias=False)``.
    Nothing is antialiased when a crop is shrunk, as in the TensorFlow SimCLR/BYOL pipelines.

    Args:
        images: ``[B, C, H, W]`` float.
        boxes: ``[B, 4]`` ``(top, left, height, width)`` from :func:`sample_crop_boxes`.
        size: output side, or ``(height, width)``.
        flip: ``[B]`` bool; the output of these samples is mirrored left-right, in the same resampling.

    Returns:
        ``[B, C, size, size]`` (or ``[B, C, *size]``) in the dtype of ``images``.
    """
    check_images(images)
    out_h, out_w = (size, size) if isinstance(size, int) else size
    B, _, H, W = images.shape
    box = boxes.to(torch.float32)
    xs = _source_coords(box[:, 1], box[:, 3], out_w)
    ys = _source_coords(box[:, 0], box[:, 2], out_h)
    if flip is not None:
        xs = torch.where(flip[:, None], xs.flip(1), xs)
    grid = torch.stack(
        (
            ((2 * xs + 1) / W - 1)[:, None, :].expand(B, out_h, out_w),  # pixel -> [-1, 1], align_corners=False
            ((2 * ys + 1) / H - 1)[:, :, None].expand(B, out_h, out_w),
        ),
        dim=-1,
    )
    src = images if images.element_size() >= 4 else images.float()  # a half-precision grid is off by pixels
    out = F.grid_sample(src, grid.to(src.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(images.dtype)


def hflip(images: Tensor, flip: Tensor) -> Tensor:
    """Mirror the samples where ``flip`` (``[B]`` bool) is set. :func:`resized_crop` fuses this into its resampling."""
    return _select(flip, images.flip(-1), images)


# --------------------------------------------------------------------------- colour
def rgb_to_grayscale(images: Tensor) -> Tensor:
    """``[B, 1, H, W]`` luma of RGB images (torchvision's weights); 1-channel images are returned as they are."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(dim=1)
    return r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def random_grayscale(images: Tensor, apply: Tensor) -> Tensor:
    """Replace the samples where ``apply`` (``[B]`` bool) is set by their luma, on all 3 channels."""
    if images.shape[1] == 1:
        return images
    return _select(apply, rgb_to_grayscale(images).expand_as(images), images)


def _blend(images: Tensor, reference: Tensor, factor: Tensor) -> Tensor:
    """``factor * images + (1 - factor) * reference`` clipped to ``[0, 1]``: torchvision's ``_blend``.

    ``lerp`` does it in one pass and returns ``images`` bit for bit where ``factor`` is 1.
    """
    return torch.lerp(reference, images, _per_sample(factor).to(images.dtype)).clamp_(0, 1)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """Scale each sample by ``factor[b]`` (``[B]``, >= 0), as ``adjust_brightness``."""
    return _blend(images, images.new_zeros(()), factor)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blend each sample with its mean luma by ``factor[b]``, as ``adjust_contrast``."""
    return _blend(images, rgb_to_grayscale(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Blend each RGB sample with its luma image by ``factor[b]``, as ``adjust_saturation``."""
    return images if images.shape[1] == 1 else _blend(images, rgb_to_grayscale(images), factor)


def _hue(r: Tensor, g: Tensor, b: Tensor, maxc: Tensor, spread: Tensor) -> Tensor:
    """``[B, 1, H, W]`` HSV hue in turns, in ``(-1/6, 5/6)``, by torchvision's ``_rgb_to_hsv`` formula (0 for grays)."""
    sector = torch.where(maxc == r, g - b, torch.where(maxc == g, b - r + 2 * spread, r - g + 4 * spread))
    return sector.div_(torch.where(spread == 0, 1.0, spread)).div_(6.0)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate each RGB sample's hue by ``shift[b]`` (``[B]``, in ``[-0.5, 0.5]``), as ``adjust_hue``.

    Saturation and value are kept, and RGB comes back through the closed form
    ``v - (v - min) * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6h) mod 6`` and ``n = 5, 3, 1``.
    """
    if images.shape[1] == 1:
        return images
    r, g, b = images.split(1, dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)  # [B, 1, H, W]; aminmax over dim 1 is slow on CPU
    spread = maxc - torch.minimum(torch.minimum(r, g), b)
    hue = _hue(r, g, b, maxc, spread).add_(_per_sample(shift).to(images.dtype))  # in (-2/3, 4/3)
    hue = hue.sub_(hue.floor()).mul_(6)  # mod 1, in sixths of a turn
    k = (hue + torch.arange(5, 0, -2, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)).fmod_(6)
    weight = k.sub_(2).abs_().neg_().add_(2).clamp_(0, 1)  # clamp(min(k, 4 - k), 0, 1), in place
    return torch.addcmul(maxc, spread, weight, value=-1)


@dataclasses.dataclass(frozen=True)
class JitterParams:
    """Per-sample colour-jitter parameters (torchvision ``ColorJitter`` ranges, one draw per sample).

    Attributes:
        brightness: ``[B]`` brightness factors (1 = unchanged).
        contrast: ``[B]`` contrast factors.
        saturation: ``[B]`` saturation factors.
        hue: ``[B]`` hue shifts, or None when hue is not jittered (that op is then skipped).
        order: ``[B, 4]`` long, each row a permutation of the op ids ``BRIGHTNESS, CONTRAST,
            SATURATION, HUE``, giving the order in which that sample gets the four ops.
        apply: ``[B]`` bool, the jittered samples; the others pass through unchanged.
    """

    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor | None
    order: Tensor
    apply: Tensor


def sample_jitter(
    n: int,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> JitterParams:
    """Per-sample jitter: each factor uniform in ``[max(0, 1 - s), 1 + s]`` for strength ``s``, the hue
    shift uniform in ``[-hue, hue]`` (None if ``hue`` is 0), a uniformly random order, and ``apply`` with
    probability ``p``.
    """

    def factor(strength: float) -> Tensor:
        return _uniform((n,), max(0.0, 1.0 - strength), 1.0 + strength, device, generator)

    return JitterParams(
        brightness=factor(brightness),
        contrast=factor(contrast),
        saturation=factor(saturation),
        hue=_uniform((n,), -hue, hue, device, generator) if hue > 0 else None,
        order=torch.rand(n, 4, device=device, generator=generator).argsort(dim=1),
        apply=sample_bernoulli(n, p, device, generator),
    )


def _blend_slots_(x: Tensor, params: JitterParams, slots: range, active: Tensor) -> Tensor:
    """In place: the brightness/contrast/saturation op of each order slot, for the samples where ``active[:, slot]``.

    The three ops are all a blend, towards 0, the mean luma or the luma image, so one fused
    blend per slot serves every sample whatever its order. A hue slot, an inactive slot, or
    saturation on a 1-channel image gets factor 1, which leaves the pixels exactly as they are.
    """
    saturation = params.saturation if x.shape[1] == 3 else torch.ones_like(params.saturation)
    gains = torch.stack((params.brightness, params.contrast, saturation, torch.ones_like(saturation)), dim=1)
    for slot in slots:
        op = params.order[:, slot]  # [B]
        factor = torch.where(active[:, slot], gains.gather(1, op[:, None]).squeeze(1), 1.0)
        gray = rgb_to_grayscale(x)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        reference = _select(op == SATURATION, gray, _per_sample(op == CONTRAST) * mean)  # brightness: towards 0
        x.lerp_(reference, 1 - _per_sample(factor).to(x.dtype)).clamp_(0, 1)  # x + (1 - f) (reference - x)
    return x


def color_jitter(images: Tensor, params: JitterParams) -> Tensor:
    """Brightness, contrast, saturation and hue, each sample in its own random order (``params.order``).

    torchvision's ``ColorJitter`` draws one random order per call, the same for the whole batch;
    the TensorFlow SimCLR code draws one per image, and that is what happens here. Hue, the one op
    that is not a blend, runs once between two passes of blends: before it, the slots that come
    before each sample's hue, and after it the rest.
    """
    check_images(images)
    if params.hue is None or images.shape[1] == 1:
        x = _blend_slots_(images.clone(), params, range(4), torch.ones_like(params.order, dtype=torch.bool))
    else:
        hue_slot = (params.order == HUE).int().argmax(dim=1, keepdim=True)  # [B, 1]
        slot = torch.arange(4, device=images.device)
        x = _blend_slots_(images.clone(), params, range(0, 3), slot < hue_slot)
        x = _blend_slots_(adjust_hue(x, params.hue), params, range(1, 4), slot > hue_slot)
    return _select(params.apply, x, images)


# --------------------------------------------------------------------------- blur, solarize, normalise
def blur_kernel_size(side: int) -> int:
    """SimCLR's blur kernel: about 10% of the image side, made odd (224 -> 23, 96 -> 9, 28 -> 3, < 10 -> 1: no blur)."""
    size = int(0.1 * side)
    return size + 1 if size % 2 == 0 else size


def sample_blur_sigma(
    n: int, p: float, sigma: tuple[float, float], device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """``[n]`` sigmas uniform in ``sigma`` for the samples blurred with probability ``p``, 0 for the others."""
    value = _uniform((n,), sigma[0], sigma[1], device, generator)
    return torch.where(sample_bernoulli(n, p, device, generator), value, 0.0)


def gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """``[B, size]`` normalised 1-D Gaussian taps, one row per sigma; sigma 0 gives the identity (a delta)."""
    x = torch.arange(size, device=sigma.device, dtype=sigma.dtype) - (size - 1) / 2
    safe = torch.where(sigma > 0, sigma, 1.0)[:, None]
    taps = torch.softmax(-0.5 * (x / safe) ** 2, dim=1)
    return torch.where(sigma[:, None] > 0, taps, (x == 0).to(sigma.dtype))


def _conv_along(images: Tensor, taps: Tensor, dim: int) -> Tensor:
    """Per-sample 1-D convolution along ``dim`` (2: rows, 3: columns) with reflect padding, as one grouped conv."""
    B, C, H, W = images.shape
    half = taps.shape[1] // 2
    shape = (1, taps.shape[1]) if dim == 3 else (taps.shape[1], 1)
    padded = F.pad(images, (half, half, 0, 0) if dim == 3 else (0, 0, half, half), mode="reflect")
    weight = taps.to(images.dtype).repeat_interleave(C, dim=0).view(B * C, 1, *shape)
    out = F.conv2d(padded.reshape(1, B * C, *padded.shape[2:]), weight, groups=B * C)
    return out.view(B, C, H, W)


def gaussian_blur(images: Tensor, sigma: Tensor, kernel_size: tuple[int, int] | None = None) -> Tensor:
    """Separable Gaussian blur with a sigma per sample, as torchvision's ``gaussian_blur``.

    Args:
        images: ``[B, C, H, W]`` float.
        sigma: ``[B]`` standard deviations in pixels; samples with sigma 0 are left unchanged.
        kernel_size: odd ``(height, width)`` taps; by default :func:`blur_kernel_size` of each side.

    Returns:
        the blurred ``[B, C, H, W]``, with reflect padding at the borders.
    """
    check_images(images)
    k_h, k_w = kernel_size or (blur_kernel_size(images.shape[2]), blur_kernel_size(images.shape[3]))
    if k_h % 2 == 0 or k_w % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {(k_h, k_w)}")
    sigma = sigma.to(torch.float32)
    x = _conv_along(images, gaussian_kernels(sigma, k_w), dim=3)
    return _conv_along(x, gaussian_kernels(sigma, k_h), dim=2)


def solarize(images: Tensor, apply: Tensor) -> Tensor:
    """Invert the pixels at or above 0.5 (``x -> 1 - x``) in the samples where ``apply`` (``[B]`` bool) is set.

    At threshold 0.5 that is ``min(x, 1 - x)``, which needs no per-pixel ``where`` (slow on CPU);
    the other samples compare with ``inf`` instead of ``1 - x`` and keep ``x``.
    """
    keep = torch.where(_per_sample(apply), 0.0, math.inf).to(images.dtype)
    return torch.minimum(images, (1 - images).add_(keep))


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(images - mean) / std`` per channel."""
    if len(mean) != images.shape[1] or len(std) != images.shape[1]:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for {images.shape[1]}-channel images")
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean_t) / std_t
