"""I-JEPA (Assran et al. 2023): predict a target encoder's representations of image blocks from one context block.

Each step draws multi-block masks on the patch grid (:func:`mmssl.masking.multi_block_mask`): ``M = 4`` target
blocks of 15-20% of the patches (aspect ratio 0.75-1.5) and one context block of 85-100% (aspect ratio 1) with
the target patches removed from it, at least ``min_keep`` patches left. The context encoder (the student) sees
the context patches only (:meth:`Encoder.encode_visible`, each patch with its own position embedding); the
target encoder, an EMA copy of it (:class:`mmssl.teacher.MomentumTeacher`, momentum 0.996 -> 1 linearly over
the run), encodes the whole image, and its outputs, layer-normalised, at the target patches are the targets. A
narrow transformer, :class:`IJEPAPredictor`, reads the context tokens plus one mask token per target patch,
each with the 2-D sin-cos embedding of its place, and predicts every target block separately; the loss is the
regression error averaged over the target patches of the (global) batch. No pixels are reconstructed and no
views are made: the recipe feeds single (randomly cropped) images.

Loss: ``smooth_l1`` (beta 1), what the released code optimises (``F.smooth_l1_loss``) for the published
numbers; the paper's eq. 1 is the squared L2 distance, ``loss: mse``.

Differences from the reference, documented: the ViT is transformers' (a [CLS] token the context encoder also
encodes, learned position embeddings interpolated to the grid) where I-JEPA's has neither; the masks' documented
differences are :func:`mmssl.masking.multi_block_mask`'s (blocks may touch the last row and column, the minimum
context is guaranteed rather than retried, the batch's common context size is kept by a uniform choice rather
than the first patches in raster order); the export is the context encoder, where the paper evaluates the
target encoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ViTConfig
from transformers.models.vit.modeling_vit import ViTLayer

from mmssl.encoder import Encoder
from mmssl.masking import multi_block_mask, multi_block_worst_case
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_momentum, check_positive
from mmssl.objectives.dino import cosine_value
from mmssl.objectives.losses import f32, masked_regression_loss
from mmssl.teacher import MomentumTeacher, RunLinearSchedule
from mmssl.types import Batch, ObjectiveOutput


@dataclass(frozen=True)
class IJEPAConfig:
    """I-JEPA; defaults are the paper's (sec. 3-4) and its released ViT-H/14 configs (``in1k_vith14_ep300.yaml``)."""

    name: str = "ijepa"
    num_targets: int = 4  # M target blocks (npred)
    target_scale: tuple[float, float] = (0.15, 0.2)  # a target block's share of the patches (pred_mask_scale)
    target_aspect: tuple[float, float] = (0.75, 1.5)  # a target block's rows / cols (aspect_ratio)
    context_scale: tuple[float, float] = (0.85, 1.0)  # the context block's share, aspect 1 (enc_mask_scale)
    min_keep: int = 10  # fewest context patches per image (min_keep, on a 16x16 grid)
    predictor_dim: int = 96  # narrow predictor; the paper's is 384 wide for a 1280-wide ViT-H (pred_emb_dim)
    predictor_depth: int = 4  # the paper's: 12 (pred_depth)
    predictor_heads: int = 4  # 24 features per head, as the paper's 384 / 16
    loss: Literal["smooth_l1", "mse"] = "smooth_l1"  # the code's F.smooth_l1_loss; the paper's eq. 1: mse (L2)
    loss_beta: float = 1.0  # smooth L1 transition (F.smooth_l1_loss's default)
    base_momentum: float = 0.996  # target encoder EMA, linear to final_momentum over the run (ema)
    final_momentum: float = 1.0
    weight_decay_end: float | None = 0.4  # cosine from train.weight_decay (0.04) (final_weight_decay); None: constant

    def __post_init__(self) -> None:
        check_positive(self, "num_targets", "min_keep", "predictor_dim", "predictor_depth", "predictor_heads")
        check_positive(self, "loss_beta")
        check_momentum(self, "base_momentum", "final_momentum")
        for key in ("target_scale", "context_scale"):
            lo, hi = getattr(self, key)
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"objective.{key} must be [min, max] with 0 < min <= max <= 1, got {[lo, hi]}")
        lo, hi = self.target_aspect
        if not 0.0 < lo <= hi:
            raise ValueError(f"objective.target_aspect must be [min, max] with 0 < min <= max, got {[lo, hi]}")
        if self.predictor_dim % (4 * self.predictor_heads):
            raise ValueError(
                f"objective.predictor_dim={self.predictor_dim} must be a multiple of 4 (the 2-D sin-cos positions) "
                f"and of objective.predictor_heads={self.predictor_heads}: a multiple of {4 * self.predictor_heads}"
            )
        if self.weight_decay_end is not None and self.weight_decay_end < 0:
            raise ValueError(f"objective.weight_decay_end must be >= 0 (or null), got {self.weight_decay_end}")

    def check_grid(self, rows: int, cols: int) -> None:
        """The masks leave ``min_keep`` context patches on a ``rows x cols`` patch grid, whatever block sizes and
        places they draw (:func:`mmssl.masking.multi_block_worst_case`).

        Raises:
            ValueError: Naming the keys, when some draw would leave fewer.
        """
        fewest, target, context = multi_block_worst_case(
            rows, cols, self.target_scale, self.target_aspect, self.context_scale
        )
        if fewest < self.min_keep:
            raise ValueError(
                f"objective.target_scale={list(self.target_scale)} (objective.target_aspect="
                f"{list(self.target_aspect)}) leaves too little context on the {rows}x{cols} patch grid: a "
                f"{target[0]}x{target[1]} target block can leave only {fewest} patches of a {context[0]}x{context[1]} "
                f"context block (objective.context_scale={list(self.context_scale)}), below objective.min_keep="
                f"{self.min_keep}; lower objective.target_scale or objective.min_keep, raise objective.context_scale, "
                "or cut the images into more patches (encoder.patch_size)"
            )


def sincos_2d(rows: int, cols: int, dim: int) -> Tensor:
    """MAE's and I-JEPA's fixed 2-D sin-cos position embedding (``get_2d_sincos_pos_embed``), ``[rows * cols, dim]``.

    Patches in row-major order; the first ``dim / 2`` features embed the column, the last the row, each as
    ``[sin(p w_i), cos(p w_i)]`` with ``w_i = 10000^(-i / (dim / 4))``, ``i < dim / 4``.
    """
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")

    def embed(position: Tensor) -> Tensor:
        angle = position.flatten().to(torch.float64)[:, None] * omega[None]
        return torch.cat([angle.sin(), angle.cos()], 1)

    return torch.cat([embed(col), embed(row)], 1).float()


class IJEPAPredictor(nn.Module):
    """I-JEPA's predictor (``VisionTransformerPredictor``): a narrow ViT over the context tokens and the mask
    tokens of one target block at a time, built of transformers' :class:`ViTLayer` (pre-norm blocks, GELU MLP 4x
    wide, as I-JEPA's).

    Args:
        encoder_dim: the encoder's width ``D``, in and out.
        width, depth, heads: the predictor's transformer.
    """

    def __init__(self, encoder_dim: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        config = ViTConfig(
            hidden_size=width,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            layer_norm_eps=1e-6,
            qkv_bias=True,
            attn_implementation="sdpa",
        )
        self.embed = nn.Linear(encoder_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.layers = nn.ModuleList(ViTLayer(config) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, encoder_dim)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The reference's initialisation: truncated normal (std 0.02) linear weights and mask token, zero biases,
        and block ``l``'s two output projections divided by ``sqrt(2 l)`` (``fix_init_weight``)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for depth, layer in enumerate(self.layers, start=1):
            layer.attention.o_proj.weight.div_(math.sqrt(2.0 * depth))
            layer.mlp.fc2.weight.div_(math.sqrt(2.0 * depth))

    def forward(self, context: Tensor, context_at: Tensor, targets_at: Tensor, grid: tuple[int, int]) -> Tensor:
        """Predict each target block from the context.

        Args:
            context: ``[B, K, D]`` the context encoder's outputs.
            context_at: ``[B, K]`` their patch indices on the ``grid``.
            targets_at: ``[B, M, N]`` the patch indices of the ``M`` target blocks.
            grid: ``(rows, cols)`` of patches.

        Returns:
            ``[B, M, N, D]`` predictions; target block ``m`` attends to the context and to itself only.
        """
        (b, k), m = context_at.shape, targets_at.shape[1]
        position = sincos_2d(*grid, self.mask_token.shape[0]).to(context.device, context.dtype)  # [T, W]
        tokens = self.embed(context) + position[context_at]  # [B, K, W]
        queries = self.mask_token.to(tokens.dtype) + position[targets_at]  # [B, M, N, W]
        x = torch.cat([tokens.unsqueeze(1).expand(-1, m, -1, -1), queries], 2).flatten(0, 1)  # [B M, K + N, W]
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x[:, k:])).unflatten(0, (b, m))


class IJEPA(Objective):
    """Predict the target encoder's layer-normalised outputs at target blocks from one context block (see module
    docstring).

    Attributes:
        predictor: the :class:`IJEPAPredictor`.
        teacher: the target encoder, an EMA copy of the encoder updated in :meth:`after_optimizer_step`.
    """

    def __init__(self, config: IJEPAConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.predictor = IJEPAPredictor(
            encoder.hidden_size, config.predictor_dim, config.predictor_depth, config.predictor_heads
        )
        schedule = RunLinearSchedule(config.base_momentum, config.final_momentum)
        self.teacher = MomentumTeacher(encoder, schedule, train_mode=False)  # I-JEPA's ViT has no dropout
        self._checked_grids: set[tuple[int, int]] = set()

    def grid_of(self, batch: Batch) -> tuple[int, int]:
        """The batch's patch grid, checked once per grid size (:meth:`IJEPAConfig.check_grid`).

        Raises:
            ValueError: For units without a 2-D grid, padded batches and grids the masks do not fit.
        """
        if batch.grid is None:
            raise ValueError("ijepa masks blocks on a 2-D grid of units (Batch.grid: image patches); these have none")
        if bool(batch.padding_mask.any()):
            raise ValueError("ijepa encodes the same number of context units in every row and cannot take padding")
        grid = (int(batch.grid[0]), int(batch.grid[1]))
        if grid not in self._checked_grids:
            self.config.check_grid(*grid)
            self._checked_grids.add(grid)
        return grid

    def sample_masks(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``(context [B, K], targets [B, M, N])`` patch indices (:func:`mmssl.masking.multi_block_mask`)."""
        c = self.config
        return multi_block_mask(
            batch.batch_size,
            *self.grid_of(batch),
            num_targets=c.num_targets,
            target_scale=c.target_scale,
            target_aspect=c.target_aspect,
            context_scale=c.context_scale,
            min_keep=c.min_keep,
            device=batch.units.device,
        )

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        context, targets = self.sample_masks(batch)
        return self.predict_targets(encoder, batch, context, targets)

    def predict_targets(self, encoder: Encoder, batch: Batch, context: Tensor, targets: Tensor) -> ObjectiveOutput:
        """The loss of predicting ``targets`` (``[B, M, N]`` patch indices) from ``context`` (``[B, K]``)."""
        c = self.config
        hidden = encoder.encode_visible(batch, context).hidden  # [B, K, D]
        pred = self.predictor(hidden, context, targets, batch.grid).flatten(0, 2)  # [B M N, D]
        target = self.target_representations(batch, targets).flatten(0, 2)
        everywhere = torch.ones(pred.shape[0], dtype=torch.bool, device=pred.device)
        loss = masked_regression_loss(pred, target, everywhere, loss=c.loss, beta=c.loss_beta)
        covered = torch.zeros(batch.padding_mask.shape, device=targets.device).scatter_(1, targets.flatten(1), 1.0)
        logs = {
            "context_fraction": torch.tensor(context.shape[1] / batch.padding_mask.shape[1]),
            "target_fraction": covered.mean(),
            "momentum": self.teacher.momentum.detach().clone(),
            "target_std": target.std(0).mean(),
            "pred_std": pred.detach().float().std(0).mean(),
        }
        return ObjectiveOutput(loss=loss, terms={"ijepa": loss}, logs=logs)

    @torch.no_grad()
    def target_representations(self, batch: Batch, targets: Tensor) -> Tensor:
        """``[B, M, N, D]`` in at least float32: the target encoder's outputs on the whole image, layer-normalised without
        affine parameters (``F.layer_norm``, as the reference), at the target patches ``targets`` (``[B, M, N]``)."""
        hidden = self.teacher.module.encode(batch).hidden  # [B, T, D]
        hidden = F.layer_norm(f32(hidden), hidden.shape[-1:])
        at = targets.flatten(1).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return hidden.gather(1, at).view(*targets.shape, hidden.shape[-1])

    def after_optimizer_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        """EMA update of the target encoder, the momentum linear from ``base_momentum`` to ``final_momentum``."""
        self.teacher.update(encoder, step, max_steps)

    def scheduled_weight_decay(self, base: float, position: int, max_steps: int) -> float:
        """AdamW's decay for optimizer step ``position``: the cosine from ``base`` (``train.weight_decay``) to
        ``objective.weight_decay_end`` (I-JEPA: 0.04 -> 0.4; :class:`mmssl.optim.WeightDecaySchedule`)."""
        end = self.config.weight_decay_end
        return base if end is None else cosine_value(position, max_steps, base, end)
