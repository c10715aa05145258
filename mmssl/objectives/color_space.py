"""CIE L*a*b* colour space and the quantised ab output space of colorization (Zhang et al. 2016).

The conversion is written out (no kornia / scikit-image): sRGB (IEC 61966-2-1 transfer curve) -> linear RGB ->
CIE XYZ (sRGB primaries, D65 white) -> CIE L*a*b* relative to the D65 white point. ``L`` is in ``[0, 100]``,
``a`` and ``b`` roughly in ``[-110, 110]``. Reference values (Lindbloom's calculator, scikit-image's
``rgb2lab``): pure red ``(1, 0, 0)`` is ``L*a*b* = (53.24, 80.09, 67.20)``.

The output space (Sec. 2.1 of the paper): ab quantised on a grid of side 10, keeping the bins in the sRGB gamut,
i.e. the nearest grid point of some sRGB colour (:func:`gamut_bins`: 261 bins); a colour is soft-encoded over its
5 nearest bins with a Gaussian kernel (sigma = 5); class rebalancing weights (Sec. 2.2) come from the smoothed
empirical distribution of the bins (:func:`rebalancing_weights`); annealed-mean decoding (Sec. 2.3) turns
predicted distributions back into ab values (:func:`annealed_mean`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# linear sRGB -> XYZ for the sRGB primaries and the D65 white (IEC 61966-2-1; Lindbloom's matrix)
SRGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
D65_WHITE = (0.95047, 1.0, 1.08883)  # XYZ of the reference white (Y = 1)
_DELTA = 6.0 / 29.0  # CIE's junction of the cube root and the linear segment of f(t)
GAMUT_LEVELS = 64  # RGB levels per channel sampled for the gamut (the same 261 bins as all 256**3 8-bit colours)


def _channels_last(x: Tensor) -> Tensor:
    """``[..., 3, H, W]`` -> ``[..., H, W, 3]``."""
    return x.movedim(-3, -1)


def srgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in ``[0, 1]`` to CIE L*a*b* (D65).

    Args:
        rgb: ``[..., 3, H, W]`` gamma-encoded sRGB values in ``[0, 1]``.

    Returns:
        ``[..., 3, H, W]`` float32: ``L`` in ``[0, 100]``, then ``a``, ``b``.
    """
    rgb = _channels_last(rgb.float()).clamp(0.0, 1.0)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(SRGB_TO_XYZ, dtype=linear.dtype, device=linear.device)
    xyz = linear @ matrix.T / torch.tensor(D65_WHITE, dtype=linear.dtype, device=linear.device)
    f = torch.where(xyz > _DELTA**3, xyz.clamp_min(1e-12).pow(1.0 / 3.0), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(-1)
    lab = torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-1)
    return lab.movedim(-1, -3)


def lab_to_srgb(lab: Tensor) -> Tensor:
    """The inverse of :func:`srgb_to_lab`, clipped to the sRGB cube.

    Args:
        lab: ``[..., 3, H, W]`` L*a*b* values.

    Returns:
        ``[..., 3, H, W]`` sRGB in ``[0, 1]`` (colours outside the gamut clipped per channel).
    """
    lightness, a, b = _channels_last(lab.float()).unbind(-1)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=-1)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))
    xyz = xyz * torch.tensor(D65_WHITE, dtype=xyz.dtype, device=xyz.device)
    linear = (xyz @ torch.linalg.inv(torch.tensor(SRGB_TO_XYZ, dtype=xyz.dtype, device=xyz.device)).T).clamp(0, 1)
    rgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.pow(1.0 / 2.4) - 0.055)
    return rgb.clamp(0.0, 1.0).movedim(-1, -3)


def lightness(rgb: Tensor) -> Tensor:
    """``L* / 100`` of sRGB images: ``[..., 3, H, W]`` in ``[0, 1]`` -> ``[..., 1, H, W]`` in ``[0, 1]``."""
    return srgb_to_lab(rgb)[..., :1, :, :] / 100.0


def gamut_bins(grid_size: float = 10.0, levels: int = GAMUT_LEVELS) -> Tensor:
    """Centres of the ab bins of side ``grid_size`` that some sRGB colour falls in (nearest grid point).

    Args:
        grid_size: the side of a bin in ab units (the paper: 10).
        levels: RGB levels per channel sampled from the cube (``levels ** 3`` colours).

    Returns:
        ``[Q, 2]`` float32 ab centres (multiples of ``grid_size``), sorted by a then b; Q = 261 for a grid of 10.
    """
    values = torch.linspace(0.0, 1.0, levels)
    cube = torch.stack(torch.meshgrid(values, values, values, indexing="ij"))  # [3, L, L, L]: an image of colours
    ab = srgb_to_lab(cube.flatten(2))[1:].flatten(1).T  # [L**3, 2]
    cells = torch.round(ab / grid_size).long()
    span = int(cells[:, 1].max() - cells[:, 1].min()) + 1
    keys = torch.unique((cells[:, 0] - cells[:, 0].min()) * span + cells[:, 1] - cells[:, 1].min())  # sorted: a, b
    a, b = keys // span + cells[:, 0].min(), keys % span + cells[:, 1].min()
    return torch.stack([a, b], dim=1).float() * grid_size


def soft_encode(ab: Tensor, centres: Tensor, neighbours: int, sigma: float) -> Tensor:
    """Soft-encode ab values over their nearest bins (Sec. 2.1: 5 neighbours, Gaussian kernel sigma = 5).

    Args:
        ab: ``[N, 2]`` ab values.
        centres: ``[Q, 2]`` bin centres.
        neighbours: how many nearest bins share each value (1: a one-hot of the nearest bin).
        sigma: width of the Gaussian kernel on the ab distance.

    Returns:
        ``[N, Q]`` target distributions (rows sum to 1).
    """
    distance, index = torch.cdist(ab.float(), centres).topk(neighbours, dim=1, largest=False)  # [N, k]
    weights = torch.softmax(-(distance**2) / (2 * sigma**2), dim=1)
    return torch.zeros(ab.shape[0], centres.shape[0], device=ab.device).scatter_(1, index, weights)


def nearest_bin(ab: Tensor, centres: Tensor) -> Tensor:
    """``[N, 2]`` ab values -> ``[N]`` int64 index of the nearest of the ``[Q, 2]`` bin centres."""
    return torch.cdist(ab.float(), centres).argmin(dim=1)


def rebalancing_weights(counts: Tensor, centres: Tensor, sigma: float, mix: float) -> Tensor:
    """Class rebalancing (Sec. 2.2): ``w ∝ ((1 - λ) p̃ + λ / Q)^-1``, normalised so that ``Σ_q p̃_q w_q = 1``.

    ``p̃`` is the empirical bin distribution ``counts / Σ counts`` smoothed by a Gaussian kernel of width
    ``sigma`` over the ab distance between bin centres (each bin's mass spread over the gamut's bins, then
    renormalised), ``λ = mix``.

    Args:
        counts: ``[Q]`` occurrences of each bin (any non-negative numbers, not all 0).
        centres: ``[Q, 2]`` bin centres.
        sigma: the smoothing kernel's width in ab units (the paper: 5).
        mix: ``λ``, the weight of the uniform distribution (the paper: 0.5).

    Returns:
        ``[Q]`` float32 weights.
    """
    probs = counts.float() / counts.float().sum()
    kernel = torch.exp(-(torch.cdist(centres, centres) ** 2) / (2 * sigma**2))  # [Q, Q], symmetric
    kernel = kernel / kernel.sum(dim=0, keepdim=True)  # column r spreads bin r's mass, keeping it
    smoothed = kernel @ probs
    smoothed = smoothed / smoothed.sum()
    weights = 1.0 / ((1.0 - mix) * smoothed + mix / centres.shape[0])
    return weights / (smoothed * weights).sum()


def annealed_mean(logits: Tensor, centres: Tensor, temperature: float) -> Tensor:
    """Annealed-mean decoding (Sec. 2.3): the mean of ``softmax(log softmax(z) / T)`` over the bin centres.

    Args:
        logits: ``[B, Q, h, w]`` scores over the bins.
        centres: ``[Q, 2]`` bin centres.
        temperature: ``T`` (the paper: 0.38; 1 is the mean, -> 0 the mode).

    Returns:
        ``[B, 2, h, w]`` ab values.
    """
    probs = torch.softmax(F.log_softmax(logits.float(), dim=1) / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", probs, centres.to(probs.dtype))
