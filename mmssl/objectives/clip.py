"""CLIP (Radford et al. 2021): symmetric InfoNCE between the projections of two encoder towers' paired inputs.

The objective knows no modality. It reads a :class:`mmssl.encoder.TwoTowerEncoder`: an encoder
whose ``encode`` runs its *main* tower on ``batch`` (e.g. speech units) and whose :attr:`paired`
tower encodes the second modality's :class:`Batch`, which the domain's collate puts in
``Batch.pair`` (e.g. the sentence the speech reads).
Both towers are read through the :class:`mmssl.encoder.Encoder` protocol (``encode(...).pooled()``),
then projected into one joint space by :class:`ClipHeads`, which the objective owns and the export
saves beside the towers (``projection_heads.safetensors``) so that retrieval works without mmssl's
training code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mmssl.distributed import gather_with_grad, process_rank
from mmssl.encoder import Encoder, TwoTowerEncoder
from mmssl.objectives.base import Objective
from mmssl.objectives.losses import f32, full_precision
from mmssl.types import Batch, ObjectiveOutput

HEADS_FILE = "projection_heads.safetensors"
HEADS_CONFIG = "projection_heads.json"


@full_precision
def clip_loss(a: Tensor, b: Tensor, logit_scale: Tensor | float, gather: bool = True) -> Tensor:
    """CLIP's symmetric InfoNCE (Radford et al. 2021, Fig. 3) between paired embeddings.

    With ``a``, ``b`` L2-normalised here and ``s`` the logit scale (``1 / temperature``), the
    logits of local row ``i`` against the global batch are ``s * a_i . b_j`` and ``s * b_i . a_j``;
    the positive is ``j = rank * B + i``::

        loss = ( CE(s * a @ b_global.T, pos) + CE(s * b @ a_global.T, pos) ) / 2

    i.e. the mean of the ``a -> b`` and ``b -> a`` cross entropies. Candidates of every process
    are gathered with :func:`mmssl.distributed.gather_with_grad` and anchors are
    local, so DDP's gradient averaging makes the step equal to the one-process loss on the
    concatenated global batch.

    Args:
        a: ``[B, P]`` projections of the first modality (e.g. speech).
        b: ``[B, P]`` projections of the second (e.g. text); ``b[i]`` is paired with ``a[i]``.
        logit_scale: scalar ``s > 0`` (CLIP learns ``log s``, initialised to ``log(1 / 0.07)``
            and clipped so that ``s <= 100``).
        gather: take negatives from every process (no-op in one process).

    Returns:
        Scalar loss.

    Raises:
        ValueError: If the shapes differ or are not ``[B, P]``.

    Example:
        >>> a, b = torch.randn(8, 16), torch.randn(8, 16)
        >>> clip_loss(a, b, 1 / 0.07).shape
        torch.Size([])
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"a and b must both be [B, P] of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = F.normalize(f32(a), dim=1), F.normalize(f32(b), dim=1)
    all_a, all_b = (gather_with_grad(a), gather_with_grad(b)) if gather else (a, b)  # [W * B, P]
    positives = torch.arange(a.shape[0], device=a.device) + a.shape[0] * (process_rank() if gather else 0)
    a_to_b = F.cross_entropy(logit_scale * a @ all_b.T, positives)  # [B, W * B] logits
    b_to_a = F.cross_entropy(logit_scale * b @ all_a.T, positives)
    return (a_to_b + b_to_a) / 2


@dataclass(frozen=True)
class ClipConfig:
    """CLIP (Radford et al. 2021): linear projections of each tower's pooled output, learned temperature."""

    name: str = "clip"
    projection_dim: int = 256  # CLIP: 512 (ViT-B/32) to 1024; small towers need less
    init_temperature: float = 0.07  # logit scale starts at 1 / 0.07 (CLIP, sec. 2.5)
    max_logit_scale: float = 100.0  # CLIP clips the scale at 100 to prevent instability
    learn_temperature: bool = True

    def __post_init__(self) -> None:
        if self.projection_dim < 1:
            raise ValueError(f"objective.projection_dim must be >= 1, got {self.projection_dim}")
        if not 0 < 1 / self.max_logit_scale <= self.init_temperature:
            raise ValueError("objective.init_temperature must be > 0 and >= 1 / objective.max_logit_scale")


class ClipHeads(nn.Module):
    """CLIP's projections ``W_a``, ``W_b`` (linear, no bias) and the learned log logit scale.

    Args:
        main_dim: pooled width of the main tower; paired_dim: of the paired tower.
        projection_dim: ``P`` of the joint space.
        init_temperature: initial ``1 / s``; max_logit_scale: the clip on ``s``.
        learn_temperature: whether ``log s`` is trained.
    """

    def __init__(
        self,
        main_dim: int,
        paired_dim: int,
        projection_dim: int,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learn_temperature: bool = True,
    ) -> None:
        super().__init__()
        self.dims = {
            "main_dim": main_dim,
            "paired_dim": paired_dim,
            "projection_dim": projection_dim,
            "max_logit_scale": max_logit_scale,
        }
        self.main_projection = nn.Linear(main_dim, projection_dim, bias=False)
        self.paired_projection = nn.Linear(paired_dim, projection_dim, bias=False)
        self.log_logit_scale = nn.Parameter(
            torch.tensor(math.log(1 / init_temperature)), requires_grad=learn_temperature
        )
        self.max_logit_scale = max_logit_scale

    def logit_scale(self) -> Tensor:
        """``s = exp(log s)`` clipped at ``max_logit_scale`` (a scalar tensor)."""
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    def project(self, encoder: TwoTowerEncoder, batch: Batch) -> tuple[Tensor, Tensor]:
        """``([B, P], [B, P])``: both towers' pooled outputs projected into the joint space (not normalised)."""
        main, paired = encoder.encode_pair(batch)
        return self.main_projection(main.pooled()), self.paired_projection(paired.pooled())

    def save(self, out_dir: Path) -> None:
        """``projection_heads.safetensors`` (weights) and ``projection_heads.json`` (sizes) in ``out_dir``."""
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(out_dir / HEADS_FILE))
        (out_dir / HEADS_CONFIG).write_text(json.dumps(self.dims, indent=2) + "\n")

    @classmethod
    def load(cls, export_dir: Path, random_init: bool = False) -> ClipHeads:
        """The heads saved by :meth:`save` (``random_init``: same sizes, fresh weights, CLIP's initial scale)."""
        path = Path(export_dir) / HEADS_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{export_dir} has no {HEADS_CONFIG}: not a two-tower (clip) export")
        heads = cls(**json.loads(path.read_text()))
        if not random_init:
            heads.load_state_dict(load_file(str(Path(export_dir) / HEADS_FILE)))
        return heads


def two_towers(encoder: Encoder) -> TwoTowerEncoder:
    """``encoder`` checked to be a :class:`TwoTowerEncoder`."""
    if not isinstance(encoder, TwoTowerEncoder):
        raise ValueError(
            f"objective clip needs a two-tower encoder (paired modalities), got {type(encoder).__name__}; "
            "use a paired domain such as speech_text"
        )
    return encoder


class CLIP(Objective):
    """Symmetric InfoNCE between the projections of paired inputs (Radford et al. 2021).

    Logs the logit scale and the in-batch top-1 accuracy of each direction.
    """

    def __init__(self, config: ClipConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        towers = two_towers(encoder)
        self.heads = ClipHeads(
            towers.main.hidden_size,
            towers.paired.hidden_size,
            config.projection_dim,
            config.init_temperature,
            config.max_logit_scale,
            config.learn_temperature,
        )
        towers.attach_export("clip", self.heads)

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        a, b = self.heads.project(two_towers(encoder), batch)
        scale = self.heads.logit_scale()
        loss = clip_loss(a, b, scale)
        with torch.no_grad():
            sims = F.normalize(a.float(), dim=1) @ F.normalize(b.float(), dim=1).T  # [B, B], local only
            target = torch.arange(a.shape[0], device=a.device)
            logs = {
                "logit_scale": scale.detach(),
                "accuracy_a_to_b": (sims.argmax(1) == target).float().mean(),
                "accuracy_b_to_a": (sims.argmax(0) == target).float().mean(),
            }
        return ObjectiveOutput(loss=loss, terms={"clip": loss}, logs=logs)
