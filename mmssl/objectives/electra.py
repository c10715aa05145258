"""ELECTRA: replaced-token detection with a small masked-LM generator (Clark et al. 2020).

A generator (a masked LM a fraction of the encoder's width) fills 15% of the units from its softmax;
the encoder, the *discriminator*, classifies every real unit (not padding, not special) of the
result as original or replaced. Both train together on (paper, eq. 1-2)::

    loss = generator_weight * MLM(generator) + discriminator_weight * BCE(discriminator)

* the generator is masked as ELECTRA's code does (``pretrain_helpers.mask``): of the chosen 15%,
  85% become ``[MASK]`` and 15% stay (no random tokens);
* replacements are Gumbel-max draws from ``softmax(logits / temperature)``: integer ids, so no
  gradient flows from the discriminator into the generator (the paper trains the generator by
  maximum likelihood, not adversarially, sec. 2);
* a sampled token equal to the original is labelled "original" (sec. 2);
* generator and discriminator share their input embeddings (word, position and token type tables,
  sec. 3.2), which :meth:`mmssl.encoder.Encoder.mlm_generator` arranges.

Both losses are per-unit means over the global batch (:func:`mmssl.distributed.global_mean_normalizer`),
as ELECTRA's code normalises them over its batch. The generator is attached to the encoder's export,
in its ``generator/`` folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.distributed import global_mean_normalizer
from mmssl.encoder import Encoder
from mmssl.masking import bert_mask
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_positive, check_ratio
from mmssl.objectives.losses import unit_classification_loss
from mmssl.types import Batch, ObjectiveOutput

GENERATOR_DIR = "generator"  # the generator's folder inside the export


@dataclass(frozen=True)
class ELECTRAConfig:
    """ELECTRA (Clark et al. 2020); defaults are ELECTRA-Small's (Table 6 and the official ``configure_pretraining.py``)."""

    name: str = "electra"
    mask_prob: float = 0.15  # Table 6: 15% (Large: 25%)
    mask_token_frac: float = 0.85  # official code: 85% of the chosen units become [MASK], the rest stay as they are
    discriminator_weight: float = 50.0  # lambda of eq. 2 (Table 6, disc_weight)
    generator_weight: float = 1.0  # official gen_weight
    generator_size_fraction: float = 0.25  # of hidden, FFN and heads; Table 6: 1/4 Small, 1/3 Base and Large
    generator_num_layers: int | None = None  # None: as deep as the discriminator (official generator_layers=1.0)
    temperature: float = 1.0  # of the generator's softmax when sampling (official default)

    def __post_init__(self) -> None:
        check_ratio(self.mask_prob, "mask_prob")
        if not 0.0 <= self.mask_token_frac <= 1.0:
            raise ValueError(f"objective.mask_token_frac must be in [0, 1], got {self.mask_token_frac}")
        check_positive(self, "discriminator_weight", "generator_weight", "temperature")
        if not 0.0 < self.generator_size_fraction <= 1.0:
            raise ValueError(
                f"objective.generator_size_fraction={self.generator_size_fraction} must be in (0, 1]: the generator "
                "is a fraction of the discriminator's width, never larger (the paper finds 1/4 to 1/2 best)"
            )
        if self.generator_num_layers is not None and self.generator_num_layers < 1:
            raise ValueError(f"objective.generator_num_layers must be >= 1, got {self.generator_num_layers}")

    def check_recipe(self, recipe: Any) -> None:
        """The generator is not deeper than the discriminator (the encoder's ``num_layers``, where it has one)."""
        depth = getattr(recipe.encoder, "num_layers", None)
        if self.generator_num_layers is not None and depth is not None and self.generator_num_layers > depth:
            raise ValueError(
                f"objective.generator_num_layers={self.generator_num_layers} makes the generator deeper than the "
                f"discriminator (encoder.num_layers={depth}); the generator must not be larger"
            )


@torch.no_grad()
def sample_tokens(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """One id per row drawn from ``softmax(logits / temperature)`` by the Gumbel-max trick, with no gradient.

    Args:
        logits: ``[N, V]`` generator scores at the masked units.
        temperature: divides the logits before sampling.

    Returns:
        ``[N]`` int64 ids.
    """
    uniform = torch.rand(logits.shape, device=logits.device).clamp_(min=torch.finfo(torch.float32).tiny)
    gumbel = -torch.log(-torch.log(uniform))
    return (logits.detach().float() / temperature + gumbel).argmax(-1)


def replace_tokens(ids: Tensor, mask: Tensor, sampled: Tensor) -> tuple[Tensor, Tensor]:
    """The discriminator's input and its labels.

    Args:
        ids: ``[B, T]`` original ids.
        mask: ``[B, T]`` bool, the generator's masked units.
        sampled: ``[N]`` ids drawn at the masked units, ``N = mask.sum()``, in row-major order.

    Returns:
        ``(corrupted, replaced)``: ``[B, T]`` ids with the samples in place, and ``[B, T]`` bool, True where
        the input now differs from the original (a sample equal to the original counts as original).
    """
    corrupted = ids.masked_scatter(mask, sampled.to(ids.dtype))
    return corrupted, corrupted != ids


def replaced_token_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Binary cross-entropy of replaced-token detection, a mean over the global number of units.

    Args:
        logits: ``[M]`` discriminator logits at the real units.
        labels: ``[M]`` bool, True where the unit was replaced.

    Returns:
        ``(loss, accuracy)``: the loss and the local accuracy of ``logits > 0`` (detached).
    """
    n = torch.tensor(float(labels.numel()), device=logits.device)
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum")
    correct = ((logits.detach() > 0) == labels).float()
    accuracy = correct.mean() if labels.numel() else torch.zeros((), device=logits.device)
    return loss / global_mean_normalizer(n), accuracy


class GeneratorExport:
    """Saves the generator in its library's format into ``generator/`` beside the discriminator's export."""

    def __init__(self, generator: Encoder) -> None:
        self.generator = generator

    def save(self, out_dir: Path) -> None:
        self.generator.export(Path(out_dir) / GENERATOR_DIR)


class ELECTRA(Objective):
    """Replaced-token detection by the encoder, on tokens a jointly trained generator sampled (see module docstring).

    The generator (:meth:`Encoder.mlm_generator`) is a submodule of the objective, so it is in every
    checkpoint; the discriminator's head is the encoder's own (:meth:`Encoder.replaced_token_head`), so
    it is saved with the encoder.
    """

    def __init__(self, config: ELECTRAConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        if encoder.mask_token_id is None or encoder.vocab_size is None:
            raise ValueError(f"{type(encoder).__name__} has no mask token: the electra objective needs one")
        encoder.replaced_token_head()  # fails early, naming the encoder that would fit
        self.generator = encoder.mlm_generator(config.generator_size_fraction, config.generator_num_layers)
        encoder.attach_export(GENERATOR_DIR, GeneratorExport(self.generator))

    def generator_logits(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Mask the batch and run the generator at the masked units.

        Returns:
            ``(mask, logits, targets)``: ``[B, T]`` bool masked units, ``[N, V]`` generator logits there and
            ``[N]`` the original ids.
        """
        cfg = self.config
        mask, masked = bert_mask(
            batch.units,
            batch.maskable,
            mask_token_id=self.generator.mask_token_id,
            vocab_size=self.generator.vocab_size,
            mask_prob=cfg.mask_prob,
            mask_token_frac=cfg.mask_token_frac,
            random_token_frac=0.0,
        )
        hidden = self.generator.encode_at(batch.replace(units=masked), mask)  # [N, D_generator]
        return mask, self.generator.prediction_head()(hidden), batch.units[mask]

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        cfg = self.config
        mask, logits, targets = self.generator_logits(batch)
        mlm, mlm_accuracy = unit_classification_loss(logits, targets)
        corrupted, replaced = replace_tokens(batch.units, mask, sample_tokens(logits, cfg.temperature))
        real = batch.maskable  # every unit but padding and [CLS]/[SEP]
        hidden = encoder.encode_at(batch.replace(units=corrupted), real)  # [M, D]
        rtd, rtd_accuracy = replaced_token_loss(encoder.replaced_token_head()(hidden), replaced[real])
        loss = cfg.generator_weight * mlm + cfg.discriminator_weight * rtd
        logs = {
            "mlm_accuracy": mlm_accuracy,
            "rtd_accuracy": rtd_accuracy,
            "replaced_fraction": (replaced.sum() / real.sum().clamp(min=1)).detach(),
        }
        return ObjectiveOutput(loss=loss, terms={"mlm": mlm, "rtd": rtd}, logs=logs)
