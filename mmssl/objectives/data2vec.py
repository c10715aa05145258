"""data2vec (Baevski et al. 2022): regress a teacher's contextual representations of masked units.

One objective for every modality. The student encodes a masked batch; an EMA teacher
(:class:`mmssl.teacher.MomentumTeacher`, decay annealed linearly from ``ema_decay`` to
``ema_end_decay``, updated in :meth:`Data2Vec.after_optimizer_step`) encodes the same batch unmasked; the target at each unit
is the average of the teacher's top-K layer outputs, each normalised first (instance norm over
the units of a sample, as in data2vec 1.0; layer norm as an option). A linear head regresses the
targets from the student's output at the masked units, with MSE or smooth L1, normalised by the
global number of masked units.

The objective knows nothing of the modality: it masks on the unit grid with the generator the
recipe names (``bert`` for tokens with 80/10/10 corruption, ``block`` on a 2-D patch grid,
``span`` for frames, ``random`` for anything, nodes included), and reads the encoder through
:meth:`Encoder.encode_at` (student) and :meth:`Encoder.encode` with ``all_layers=True`` (teacher).

``num_masks > 1`` is data2vec 2.0's ``clone_batch``: the student sees M differently masked
copies of each sample, all regressing one teacher pass, which amortises the teacher's cost.

Differences from the reference, documented: targets are built from each block's output (what
the encoder exposes as ``layers``) rather than from the feed-forward output inside the block;
the per-unit loss is the mean over features rather than the sum scaled by ``1/sqrt(D)`` (a
constant factor that Adam is invariant to).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder
from mmssl.masking import bert_mask, random_mask, span_mask
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_span_fits
from mmssl.objectives.losses import masked_regression_loss
from mmssl.objectives.units import grid_block_mask
from mmssl.teacher import LinearSchedule, MomentumTeacher
from mmssl.types import Batch, ObjectiveOutput

MaskKind = Literal["bert", "block", "span", "random"]
NormKind = Literal["instance", "layer", "none"]


@dataclass(frozen=True)
class Data2VecConfig:
    """data2vec settings; defaults are data2vec 1.0's text values where the paper gives one."""

    name: str = "data2vec"
    mask: MaskKind = "random"  # bert (tokens), block (2-D patch grid), span (frames), random (any units)
    mask_prob: float = 0.15  # bert/random: fraction of units; block: ratio of the grid; span: start probability
    span_length: int = 10  # mask=span: units per span (wav2vec 2.0 / data2vec audio: p=0.065, L=10)
    min_block: int = 4  # mask=block: smallest block in units (BEiT: 16 on a 14x14 grid)
    top_k_layers: int = 8  # average of the teacher's top-K layers (paper: 8 for Base, 12 for Large)
    layer_norm_targets: NormKind = "instance"  # per teacher layer before averaging (paper: instance)
    final_norm: NormKind = "none"  # on the averaged target (data2vec 2.0 vision/audio: instance or layer)
    loss: Literal["mse", "smooth_l1"] = "mse"  # paper: smooth L1 for vision (beta 2), MSE for text and speech
    loss_beta: float = 2.0  # smooth L1 transition (ignored with mse)
    ema_decay: float = 0.999  # tau_0
    ema_end_decay: float = 0.9999  # tau_e
    ema_anneal_steps: int = 30000  # tau_0 -> tau_e linearly over this many optimizer steps (then constant)
    num_masks: int = 1  # data2vec 2.0 clone_batch: masked copies per sample sharing one teacher pass

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"objective.mask_prob must be in (0, 1), got {self.mask_prob}")
        for key in ("span_length", "min_block", "top_k_layers", "num_masks"):
            if getattr(self, key) < 1:
                raise ValueError(f"objective.{key} must be >= 1, got {getattr(self, key)}")
        if self.loss_beta <= 0:
            raise ValueError(f"objective.loss_beta must be > 0, got {self.loss_beta}")
        for key in ("ema_decay", "ema_end_decay"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"objective.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.ema_anneal_steps < 0:
            raise ValueError(f"objective.ema_anneal_steps must be >= 0, got {self.ema_anneal_steps}")


def normalise_units(x: Tensor, padding_mask: Tensor, kind: NormKind) -> Tensor:
    """Normalise ``[B, T, D]`` unit representations without affine parameters, in float32.

    ``instance``: each feature standardised over the real units of its sample (data2vec's
    ``F.instance_norm`` on ``[B, D, T]``, here with padding left out of the statistics);
    ``layer``: each unit standardised over its features (``F.layer_norm``); ``none``: unchanged.
    Padding rows come out as zeros for ``instance``.
    """
    x = x.float()
    if kind == "none":
        return x
    if kind == "layer":
        return F.layer_norm(x, x.shape[-1:])
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)  # [B, T, 1]
    count = keep.sum(1, keepdim=True).clamp(min=1.0)
    mean = (x * keep).sum(1, keepdim=True) / count
    var = (((x - mean) * keep) ** 2).sum(1, keepdim=True) / count  # biased, as instance_norm
    return (x - mean) * torch.rsqrt(var + 1e-5) * keep


def teacher_targets(
    layers: tuple[Tensor, ...], padding_mask: Tensor, top_k: int, layer_norm: NormKind, final_norm: NormKind
) -> Tensor:
    """data2vec targets: ``final_norm(mean_{l in top K} layer_norm(layers[l]))``, ``[B, T, D]`` float32.

    ``layers`` is the encoder's per-layer outputs with the embedding output first, so the
    top K are ``layers[-K:]`` and K may be at most ``len(layers) - 1``.
    """
    blocks = len(layers) - 1
    if top_k > blocks:
        raise ValueError(f"objective.top_k_layers={top_k} but the encoder has {blocks} layers")
    target = sum(normalise_units(h, padding_mask, layer_norm) for h in layers[-top_k:]) / top_k
    return normalise_units(target, padding_mask, final_norm)


def repeat_batch(batch: Batch, times: int) -> Batch:
    """``times`` stacked copies of ``batch`` (sample ``i`` of copy ``c`` at row ``c * B + i``).

    Tensors in ``extras`` whose first dimension is the batch size are repeated too; anything
    else (the unit grid, per-batch metadata) is kept as is.
    """
    if times == 1:
        return batch
    b = batch.batch_size

    def rep(x: Tensor) -> Tensor:
        return x.repeat(times, *([1] * (x.ndim - 1)))

    extras = {k: rep(v) if isinstance(v, Tensor) and v.ndim and v.shape[0] == b else v for k, v in batch.extras.items()}
    return batch.replace(
        units=rep(batch.units),
        padding_mask=rep(batch.padding_mask),
        special_mask=None if batch.special_mask is None else rep(batch.special_mask),
        extras=extras,
    )


def output_maskable(batch: Batch, output_padding: Tensor) -> Tensor:
    """``[B, T]`` bool: the units a mask may choose, on the encoder's output grid.

    ``output_padding`` is the encoder output's ``padding_mask``. Where the encoder keeps the
    unit grid (tokens, patches, nodes) this is ``batch.maskable`` (special units excluded);
    where it does not (a waveform's samples -> conv frames) every real output unit.
    """
    return batch.maskable if output_padding.shape == batch.padding_mask.shape else ~output_padding


class Data2Vec(Objective):
    """Student regresses the EMA teacher's averaged top-K layers at masked units (see module docstring)."""

    def __init__(self, config: Data2VecConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        if config.mask == "bert" and encoder.mask_token_id is None:
            raise ValueError(
                f"objective.mask=bert needs an encoder with a mask token; {type(encoder).__name__} has none"
            )
        schedule = LinearSchedule(config.ema_decay, config.ema_end_decay, config.ema_anneal_steps)
        self.teacher = MomentumTeacher(encoder, schedule, train_mode=False)  # data2vec: teacher always in eval mode
        self.head = nn.Linear(encoder.hidden_size, encoder.hidden_size)  # the paper's linear regression head

    def make_mask(self, encoder: Encoder, batch: Batch, maskable: Tensor) -> tuple[Tensor, Batch]:
        """``([B, T] bool mask, the batch the student sees)`` for the configured generator.

        ``maskable`` (``[B, T]`` bool) is on the encoder's output grid: the batch's own grid
        for units that are encoded one to one, conv frames for waveform samples.
        """
        cfg = self.config
        if cfg.mask in ("bert", "block") and maskable.shape != batch.padding_mask.shape:
            raise ValueError(
                f"objective.mask={cfg.mask} masks the batch's own units, but this encoder's output grid "
                f"{tuple(maskable.shape)} is not the unit grid {tuple(batch.padding_mask.shape)} "
                "(e.g. conv frames of a waveform); use mask=span or mask=random"
            )
        if cfg.mask == "bert":
            mask, corrupted = bert_mask(
                batch.units,
                maskable,
                mask_token_id=encoder.mask_token_id,
                vocab_size=encoder.vocab_size,
                mask_prob=cfg.mask_prob,
            )
            return mask, batch.replace(units=corrupted)
        if cfg.mask == "block":
            mask = grid_block_mask(batch, cfg.mask_prob, cfg.min_block)
            if mask is None:
                raise ValueError(
                    "objective.mask=block needs a 2-D unit grid (Batch.grid); "
                    "use mask=random or mask=span for this domain"
                )
        elif cfg.mask == "span":
            check_span_fits(maskable, cfg.span_length, "span_length")
            mask = span_mask(maskable, start_prob=cfg.mask_prob, span_length=cfg.span_length, min_spans=1)
        else:
            mask = random_mask(maskable, ratio=cfg.mask_prob)
        return mask, batch

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        cfg = self.config
        with torch.no_grad():  # one teacher pass on the unmasked batch, shared by every mask
            teacher = self.teacher.module.encode(batch, all_layers=True)
            if teacher.layers is None:
                raise ValueError(
                    f"{type(encoder).__name__}.encode(all_layers=True) returned no layers; "
                    "data2vec needs per-layer outputs"
                )
            # targets live on the encoder's output grid (conv frames for waveforms, else the unit grid)
            targets = teacher_targets(
                teacher.layers, teacher.padding_mask, cfg.top_k_layers, cfg.layer_norm_targets, cfg.final_norm
            )
        student_batch = repeat_batch(batch, cfg.num_masks)
        maskable = output_maskable(student_batch, teacher.padding_mask.repeat(cfg.num_masks, 1))
        mask, student_batch = self.make_mask(encoder, student_batch, maskable)
        encoded = encoder.encode_at(student_batch, mask, mask=None if cfg.mask == "bert" else mask)  # [N, D]
        pred = self.head(encoded).float()
        target = targets.repeat(cfg.num_masks, 1, 1)[mask]  # [N, D], row-major like encode_at
        everywhere = torch.ones(pred.shape[0], dtype=torch.bool, device=pred.device)
        loss = masked_regression_loss(pred, target, everywhere, loss=cfg.loss, beta=cfg.loss_beta)
        logs = {
            "masked_fraction": (mask.sum() / maskable.sum().clamp(min=1)).detach(),
            "ema_decay": self.teacher.momentum.detach().float(),
            "target_std": target.std(0).mean().detach() if target.shape[0] > 1 else torch.zeros(()),
            "pred_std": pred.detach().std(0).mean() if pred.shape[0] > 1 else torch.zeros(()),
        }
        return ObjectiveOutput(loss=loss, terms={"data2vec": loss}, logs=logs)

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        """EMA update of the teacher towards the student, with tau annealed linearly (data2vec sec. 3.3)."""
        self.teacher.update(encoder, step, max_steps)
