"""LeJEPA (Balestriero & LeCun 2025): a prediction term plus SIGReg, sketched isotropic Gaussian regularisation.

Teacher-free and modality-free: every view's projection predicts the centre of the global views'
projections (mean squared error), and SIGReg pushes the projections of each view towards an isotropic
Gaussian by comparing, along random unit directions (slices), their empirical characteristic function
with the standard normal one (the Epps-Pulley statistic). One trade-off weight ``lambda`` mixes them:
``(1 - lambda) * prediction + lambda * SIGReg``.

The views are the batch's own augmented views when the domain makes them (``Batch.views``: image crops,
graph views; the first two are global, any further ones local crops). When the batch carries none (text
tokens, audio frames, graph nodes without ``data.views``), the objective makes ``masked_views`` views
itself by replacing a random ``mask_prob`` of the units with the encoder's mask token or embedding, all
of them global. A view's representation is the encoder's pooled output (``EncoderOutput.pooled``: the
[CLS] token, the ResNet pool, an ego network's root node, else the mean over units).

SIGReg's sums over samples are reduced over every process with gradients
(:func:`mmssl.distributed.gather_with_grad`), so two processes give the statistic and the gradients of
one process on the global batch; a plain ``all_reduce`` there would divide the gradient by the number
of processes. The slices are drawn from a generator seeded by the optimizer step, so every process
draws the same ones and a resumed run draws them again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmssl.distributed import gather_with_grad, world_size
from mmssl.encoder import Encoder
from mmssl.masking import random_mask
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_positive, check_ratio
from mmssl.objectives.data2vec import output_maskable
from mmssl.objectives.heads import HEAD_SHAPES, MLPHead, configured_head
from mmssl.objectives.losses import f32, full_precision
from mmssl.objectives.views import embedding_std, represent
from mmssl.types import Batch, ObjectiveOutput

NUM_GLOBAL = 2  # of the batch's own views, the first two are global (multi-crop convention)


def slice_directions(dim: int, num_slices: int, seed: int, device: torch.device | str = "cpu") -> Tensor:
    """``[dim, num_slices]`` random unit directions, the same for a given ``seed`` on every process and device.

    LeJEPA seeds the slices with the global step so that processes agree without communicating.
    """
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, num_slices, generator=generator)
    return (a / a.norm(dim=0)).to(device)


def epps_pulley_grid(knots: int, t_max: float, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """``(t, phi, weights)``, each ``[knots]``: the frequencies ``linspace(0, t_max)``, the standard normal
    characteristic function ``exp(-t^2 / 2)`` there, and trapezoid weights times ``phi`` for the integral
    over ``[-t_max, t_max]`` of an even integrand (twice the one over ``[0, t_max]``)."""
    t = torch.linspace(0.0, t_max, knots, device=device)
    phi = torch.exp(-t.square() / 2)
    dt = t_max / (knots - 1)
    weights = torch.full((knots,), 2 * dt, device=device)
    weights[[0, -1]] = dt
    return t, phi, weights * phi


def global_sum_with_grad(x: Tensor) -> Tensor:
    """The sum of ``x`` over every process, differentiable: each process's share gets the gradient of the
    total (a gather, whose backward sums, then a sum); ``x`` itself in one process."""
    return gather_with_grad(x.unsqueeze(0)).sum(0) if world_size() > 1 else x


@full_precision
def sigreg_loss(proj: Tensor, directions: Tensor, knots: int = 17, t_max: float = 3.0, gather: bool = True) -> Tensor:
    """SIGReg (Balestriero & LeCun 2025, sec. 4): the Epps-Pulley statistic of projections along random slices.

    With ``x = proj @ a`` for each unit direction ``a`` and the empirical characteristic function
    ``ecf(t) = mean_n exp(i t x_n)`` over the ``N`` samples of the global batch::

        T(a) = N * integral_{-t_max}^{t_max} |ecf(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt

    by the trapezoid rule on ``knots`` points of ``[0, t_max]`` (the integrand is even), averaged over
    slices and views. The sums of ``cos(t x)`` and ``sin(t x)`` over samples are reduced over every
    process with gradients, so every process computes the statistic of the global batch (DDP's
    averaging then leaves its gradient as it is).

    Args:
        proj: ``[V, N, K]`` (or ``[N, K]``) projections of ``V`` views of this process's ``N`` samples.
        directions: ``[K, M]`` unit slices (:func:`slice_directions`).
        knots: quadrature points (paper: 17).
        t_max: largest frequency (paper's code: 3).
        gather: use the samples of every process (no-op in one process).

    Returns:
        Scalar loss.

    Raises:
        ValueError: On mismatched widths, fewer than 2 knots, ``t_max <= 0`` or a global batch below 2.
    """
    if proj.ndim not in (2, 3) or directions.ndim != 2 or proj.shape[-1] != directions.shape[0]:
        raise ValueError(
            f"proj [V, N, K] and directions [K, M] must agree, got {tuple(proj.shape)}, {tuple(directions.shape)}"
        )
    if knots < 2 or t_max <= 0:
        raise ValueError(f"knots must be >= 2 and t_max > 0, got {knots} and {t_max}")
    n = proj.shape[-2] * (world_size() if gather else 1)
    if n < 2:
        raise ValueError(f"SIGReg needs at least 2 samples in the (global) batch, got {n}")
    x = f32(proj)
    t, phi, weights = (g.to(x.dtype) for g in epps_pulley_grid(knots, t_max, proj.device))
    x_t = (x @ directions.to(x.dtype)).unsqueeze(-1) * t  # [V, N, M, knots]
    sums = torch.stack([x_t.cos().sum(-3), x_t.sin().sum(-3)])  # [2, V, M, knots]
    cos_mean, sin_mean = global_sum_with_grad(sums) / n if gather else sums / n
    err = (cos_mean - phi).square() + sin_mean.square()
    return ((err @ weights) * n).mean()


@full_precision
def prediction_loss(proj: Tensor, num_global: int) -> Tensor:
    """LeJEPA's prediction term: ``mean_{v, n, k} (centre_nk - proj_vnk)^2`` with the centre the mean of the
    ``num_global`` first views (every view predicts it, the global ones included).

    A mean over this process's samples: DDP's averaging makes it the mean over the global batch.

    Args:
        proj: ``[V, N, K]`` projections, the global views first.
        num_global: ``V_g``, 1 to ``V``.
    """
    if proj.ndim != 3 or not 1 <= num_global <= proj.shape[0]:
        raise ValueError(f"proj must be [V, N, K] with 1 to V global views, got {tuple(proj.shape)}, {num_global}")
    proj = f32(proj)
    return (proj[:num_global].mean(0) - proj).square().mean()


def lejepa_loss(
    proj: Tensor,
    directions: Tensor,
    weight: float = 0.05,
    num_global: int = 2,
    knots: int = 17,
    t_max: float = 3.0,
    gather: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """LeJEPA's loss: ``(1 - weight) * prediction_loss + weight * sigreg_loss`` (Balestriero & LeCun 2025).

    Args:
        proj: ``[V, N, K]`` projections, the ``num_global`` global views first.
        directions: ``[K, M]`` unit slices.
        weight: ``lambda`` in ``[0, 1]`` (paper: 0.05).
        num_global: how many of the views are global.
        knots: quadrature points of :func:`sigreg_loss`.
        t_max: largest frequency of :func:`sigreg_loss`.
        gather: SIGReg over the samples of every process.

    Returns:
        ``(loss, {"prediction": ..., "sigreg": ...})``, the terms unweighted.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    terms = {
        "prediction": prediction_loss(proj, num_global),
        "sigreg": sigreg_loss(proj, directions, knots, t_max, gather),
    }
    return (1 - weight) * terms["prediction"] + weight * terms["sigreg"], terms


@dataclass(frozen=True)
class SIGRegConfig:
    """LeJEPA (Balestriero & LeCun 2025); defaults are the paper's."""

    name: str = "sigreg"
    weight: float = 0.05  # lambda, the one trade-off: (1 - lambda) prediction + lambda SIGReg (paper: 0.05)
    num_slices: int = 1024  # random directions per step (lightly's default; the minimal example: 256)
    knots: int = 17  # quadrature points on [0, t_max]
    t_max: float = 3.0
    projector_hidden_dim: int = HEAD_SHAPES["lejepa_projector"].hidden_dim  # 2048
    projector_dim: int = HEAD_SHAPES["lejepa_projector"].out_dim  # 128 (the minimal example's run: 16)
    masked_views: int = 2  # views made by masking when the batch carries none (minimal example: V = 4 views)
    mask_prob: float = 0.3  # fraction of a masked view's units replaced by the mask token / embedding

    def __post_init__(self) -> None:
        check_positive(self, "num_slices", "t_max", "projector_hidden_dim", "projector_dim")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"objective.weight must be in [0, 1], got {self.weight}")
        if self.knots < 2:
            raise ValueError(f"objective.knots must be >= 2, got {self.knots}")
        if self.masked_views < 2:
            raise ValueError(
                f"objective.masked_views must be >= 2 (the prediction term compares views), got {self.masked_views}"
            )
        check_ratio(self.mask_prob, "mask_prob")


class SIGReg(Objective):
    """LeJEPA's prediction term and SIGReg on the projections of every view (see module docstring).

    ``step`` (the optimizer steps done, which seeds the slices) is a buffer, so a resumed run draws the
    slices it would have drawn.
    """

    step: Tensor

    def __init__(self, config: SIGRegConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector: MLPHead = configured_head(
            "lejepa_projector", encoder.hidden_size, config.projector_hidden_dim, config.projector_dim
        )
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def masked_view(self, encoder: Encoder, batch: Batch) -> Tensor:
        """``[B, D]``: the pooled output of ``batch`` with a random ``mask_prob`` of its units masked."""
        if not batch.units.is_floating_point() and encoder.mask_token_id is None:
            raise ValueError(
                f"sigreg makes views by masking units when the batch carries none, but {type(encoder).__name__} "
                "has no mask token: use an encoder with one (encoder.arch=bert), or give the batch views (data.views)"
            )
        maskable = output_maskable(batch, encoder.output_padding_mask(batch))
        return encoder.encode(batch, mask=random_mask(maskable, ratio=self.config.mask_prob)).pooled()

    def represent_views(self, encoder: Encoder, batch: Batch) -> tuple[list[Tensor], int]:
        """``V`` pooled representations ``[B, D]`` and how many of them are global."""
        if batch.views:
            if len(batch.views) < 2:
                raise ValueError(
                    f"sigreg compares views; the batch carries {len(batch.views)}: set data.num_views >= 2"
                )
            return [represent(encoder, v) for v in batch.views], NUM_GLOBAL
        return [self.masked_view(encoder, batch) for _ in range(self.config.masked_views)], self.config.masked_views

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        cfg = self.config
        h, num_global = self.represent_views(encoder, batch)
        v, b = len(h), h[0].shape[0]
        proj = self.projector(torch.cat(h)).view(v, b, -1)  # one projector batch over every view, as LeJEPA's code
        directions = slice_directions(proj.shape[-1], cfg.num_slices, int(self.step), proj.device)
        loss, terms = lejepa_loss(proj, directions, cfg.weight, num_global, cfg.knots, cfg.t_max)
        return ObjectiveOutput(loss=loss, terms=terms, logs={"embedding_std": embedding_std(proj[0])})

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        """The next forward pass draws the slices of optimizer step ``step + 1``."""
        self.step.fill_(step)
