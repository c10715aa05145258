"""Speech SimCLR (Jiang et al. 2020): SimCLR's NT-Xent between two augmented views of an utterance, plus the
reconstruction of the clean input features from each encoded augmented view.

The views come from the domain's transform (the audio domain's ``data.views=2``, :mod:`domains.audio.views`):
speed perturbation, pitch shift, additive noise, time and frequency masking. The batch's own units are the
clean fbank units of the same clips, the reconstruction target. The contrastive term is
:func:`mmssl.objectives.simclr.nt_xent`; with ``reconstruction_weight=0`` this is SimCLR on audio views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_positive
from mmssl.objectives.heads import HEAD_SHAPES, configured_head
from mmssl.objectives.simclr import nt_xent
from mmssl.objectives.views import contrastive_accuracy, embedding_std, views_of
from mmssl.types import Batch, ObjectiveOutput


def time_aligned_targets(clean: Tensor, clean_padding: Tensor, view_padding: Tensor) -> Tensor:
    """Each clip's clean units stretched linearly in time to its view's length.

    Speed perturbation rescales a clip's time axis uniformly, so unit ``t`` of a view of ``T_v`` units lies at
    ``t * T_c / T_v`` of the clean clip (``F.interpolate``, linear, ``align_corners=False``).

    Args:
        clean: ``[B, T_c, C]`` clean units; ``clean_padding``: ``[B, T_c]`` bool, True at padding.
        view_padding: ``[B, T_v]`` bool padding of the encoded view.

    Returns:
        ``[B, T_v, C]`` targets, 0 at the view's padding.
    """
    out = clean.new_zeros(clean.shape[0], view_padding.shape[1], clean.shape[2])
    for b in range(clean.shape[0]):
        n_clean, n_view = int((~clean_padding[b]).sum()), int((~view_padding[b]).sum())
        frames = clean[b, :n_clean].T[None]  # [1, C, T_c]
        out[b, :n_view] = F.interpolate(frames, size=n_view, mode="linear", align_corners=False)[0].T
    return out


def reconstruction_loss(prediction: Tensor, target: Tensor, padding_mask: Tensor, kind: str = "l1") -> Tensor:
    """Mean absolute (``l1``) or squared (``l2``) error over the non-padding units and their features.

    Args:
        prediction, target: ``[B, T, C]``.
        padding_mask: ``[B, T]`` bool, True at padding.

    Returns:
        Scalar loss.
    """
    error = (prediction.float() - target.float()).abs()
    error = error if kind == "l1" else error.pow(2)
    keep = (~padding_mask).unsqueeze(-1).to(error.dtype)
    return (error * keep).sum() / (keep.sum() * error.shape[-1]).clamp(min=1.0)


@dataclass(frozen=True)
class SpeechSimCLRConfig:
    """Speech SimCLR (Jiang et al. 2020)."""

    name: str = "speech_simclr"
    temperature: float = 0.5  # SimCLR's NT-Xent tau (Chen et al. 2020; no speech-specific value verified here)
    projector_hidden_dim: int = HEAD_SHAPES["simclr_projector"].hidden_dim  # 2048
    projector_dim: int = HEAD_SHAPES["simclr_projector"].out_dim  # 128
    reconstruction_weight: float = 1.0  # the paper adds the reconstruction term to NT-Xent; 0: plain SimCLR
    reconstruction_loss: Literal["l1", "l2"] = "l1"  # TERA-style L1 on the features (Liu et al. 2021)

    def __post_init__(self) -> None:
        check_positive(self, "temperature", "projector_hidden_dim", "projector_dim")
        if self.reconstruction_weight < 0:
            raise ValueError(f"objective.reconstruction_weight must be >= 0, got {self.reconstruction_weight}")

    def check_recipe(self, recipe: Any) -> None:
        """The views are made by the data (the audio domain's ``data.views=2``)."""
        views = getattr(recipe.data, "views", None)
        if views != 2:
            raise ValueError(
                f"objective.name=speech_simclr contrasts exactly two augmented views of each clip: set data.views=2 "
                f"(got data.views={views!r}) on the audio domain's fbank stream"
            )


class SpeechSimCLR(Objective):
    """NT-Xent between the two views' projections, plus ``reconstruction_weight`` times the mean over the views
    of the L1 (or L2) error of a linear head reconstructing the clean units from each view's hidden units."""

    def __init__(self, config: SpeechSimCLRConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        if encoder.unit_dim is None:
            raise ValueError(f"speech_simclr reconstructs feature units, but {type(encoder).__name__} has no unit_dim")
        self.projector = configured_head(
            "simclr_projector", encoder.hidden_size, config.projector_hidden_dim, config.projector_dim
        )
        self.reconstruction = nn.Linear(encoder.hidden_size, encoder.unit_dim)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        outputs = [encoder.encode(v) for v in views_of(batch, "speech_simclr", exactly_two=True)]
        z1, z2 = (self.projector(out.pooled()) for out in outputs)  # [B, P] each
        contrastive = nt_xent(z1, z2, self.config.temperature)
        errors = [
            reconstruction_loss(
                self.reconstruction(out.hidden),
                time_aligned_targets(batch.units, batch.padding_mask, out.padding_mask),
                out.padding_mask,
                self.config.reconstruction_loss,
            )
            for out in outputs
        ]
        reconstruction = torch.stack(errors).mean()
        loss = contrastive + self.config.reconstruction_weight * reconstruction
        logs = {"contrastive_accuracy": contrastive_accuracy(z1, z2), "embedding_std": embedding_std(z1)}
        return ObjectiveOutput(loss=loss, terms={"nt_xent": contrastive, "reconstruction": reconstruction}, logs=logs)
