"""Masked feature reconstruction with a scaled cosine error: GraphMAE (Hou et al. 2022).

Modality-agnostic: a fraction of the maskable units of ``[B, T, C]`` feature batches is
masked; most masked units are replaced by the encoder's learnable [MASK] embedding
(:meth:`Encoder.encode` with ``mask``), the rest by the features of random other units
("random-replace", sec. 3.2); the encoder's output is projected, *re-masked* (the masked
units' codes zeroed, sec. 3.3) and decoded back to ``C`` features, and the loss is the
scaled cosine error on the masked units. The decoder is the encoder's own one-layer
:meth:`Encoder.unit_decoder` (a GNN layer over the batch's graph, as in the paper): a masked
unit's code is zero after the re-mask, so only a decoder that reads its neighbours can
reconstruct it, and an encoder without one is refused (a per-unit decoder would learn a bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import CapabilityError, Encoder
from mmssl.masking import random_mask
from mmssl.objectives.base import Objective
from mmssl.types import Batch, ObjectiveOutput


def sce_loss(pred: Tensor, target: Tensor, alpha: float = 2.0) -> Tensor:
    """GraphMAE's scaled cosine error (eq. 4): ``mean_i (1 - cos(x_i, z_i)) ** alpha``.

    Args:
        pred: ``[N, C]`` reconstructed features of the masked units.
        target: ``[N, C]`` their original features (detached here).
        alpha: the scaling exponent ``gamma >= 1``, which down-weights easy units (paper: 1-3).

    Returns:
        Scalar loss (the mean over the ``N`` units).
    """
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"pred and target must both be [N, C], got {tuple(pred.shape)} and {tuple(target.shape)}")
    if alpha < 1:
        raise ValueError(f"alpha must be >= 1, got {alpha}")
    cos = (F.normalize(pred.float(), dim=-1) * F.normalize(target.detach().float(), dim=-1)).sum(-1)
    return (1.0 - cos).pow(alpha).mean()


def random_replace(batch: Batch, replace: Tensor) -> Batch:
    """The units at ``replace`` ([B, T] bool) take the features of uniformly drawn real units of the batch."""
    units = batch.units.reshape(-1, batch.units.shape[-1])
    present = (~batch.padding_mask).reshape(-1).nonzero().squeeze(1)
    targets = replace.reshape(-1).nonzero().squeeze(1)
    donors = present[torch.randint(len(present), (len(targets),), device=present.device)]
    return batch.replace(units=units.index_copy(0, targets, units[donors]).view_as(batch.units))


@dataclass(frozen=True)
class GraphMAEConfig:
    """GraphMAE (Hou et al. 2022)."""

    name: str = "graphmae"
    mask_ratio: float = 0.5  # Table 6 (Cora 0.5, PubMed 0.75)
    replace_ratio: float = 0.05  # share of masked units random-replaced instead of [MASK] (Cora 0.05)
    alpha: float = 2.0  # SCE exponent (Cora 3, Citeseer/PubMed 1-3)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"objective.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.replace_ratio < 1.0:
            raise ValueError(f"objective.replace_ratio must be in [0, 1), got {self.replace_ratio}")
        if self.alpha < 1:
            raise ValueError(f"objective.alpha must be >= 1, got {self.alpha}")


class GraphMAE(Objective):
    """Mask, encode, re-mask, decode, and score the masked units with :func:`sce_loss`."""

    def __init__(self, config: GraphMAEConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        if encoder.unit_dim is None:
            raise ValueError("graphmae reconstructs [B, T, C] feature units; the encoder has no unit_dim")
        d, c = encoder.hidden_size, encoder.unit_dim
        self.encoder_to_decoder = nn.Linear(d, d, bias=False)
        decoder = encoder.unit_decoder(d, c)
        if decoder is None:
            raise CapabilityError(
                f"graphmae decodes each masked unit from its neighbours and needs an encoder with a "
                f"unit decoder (the graph domain's GNNs), got {type(encoder).__name__}; for patches "
                "or frames use mae or simmim"
            )
        self.decoder = decoder

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        cfg = self.config
        mask = random_mask(batch.maskable, ratio=cfg.mask_ratio)  # [B, T]
        replace = mask & (torch.rand(mask.shape, device=mask.device) < cfg.replace_ratio)
        corrupted = random_replace(batch, replace) if bool(replace.any()) else batch
        hidden = encoder.encode(corrupted, mask=mask & ~replace).hidden  # [B, T, D]
        code = self.encoder_to_decoder(hidden).masked_fill(mask.unsqueeze(-1), 0.0)  # re-mask
        recon = self.decoder(code, batch)  # [B, T, C]
        loss = sce_loss(recon[mask], batch.units[mask], cfg.alpha)
        logs = {"masked_fraction": (mask.sum() / batch.maskable.sum().clamp(min=1)).detach()}
        return ObjectiveOutput(loss=loss, terms={"sce": loss}, logs=logs)
