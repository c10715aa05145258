"""Heads that several objectives build: MLP projectors/predictors with the papers' shapes, and vocabulary heads.

Nothing here knows a modality: an :class:`MLPHead` maps ``[B, D]`` embeddings (or ``[N, D]``
unit vectors), a :class:`DINOHead` ``[..., D]`` features to ``[..., K]`` prototype scores, a
vocabulary head ``[N, D]`` outputs to ``[N, V]`` scores.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoder import Encoder


class MLPHead(nn.Sequential):
    """Projection / prediction MLP: ``num_layers - 1`` blocks of Linear-BN-ReLU, then Linear.

    A linear layer followed by batch norm has no bias (the norm removes it). The optional
    last batch norm has no affine parameters, as in MoCo v3 and SimSiam. Under DDP,
    convert to ``nn.SyncBatchNorm`` (the papers normalise over the global batch).

    Args:
        in_dim: input features (the encoder's pooled width).
        hidden_dim: width of the hidden layers (unused when ``num_layers == 1``).
        out_dim: output features.
        num_layers: number of linear layers, at least 1.
        batch_norm: batch norm after each hidden linear layer.
        last_batch_norm: non-affine batch norm after the last linear layer.

    Raises:
        ValueError: If a dimension is not positive or ``num_layers < 1``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=not batch_norm))
            layers.extend([nn.BatchNorm1d(hidden_dim)] if batch_norm else [])
            layers.append(nn.ReLU(inplace=True))
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim, bias=not last_batch_norm))
        layers.extend([nn.BatchNorm1d(out_dim, affine=False)] if last_batch_norm else [])
        super().__init__(*layers)


@dataclass(frozen=True)
class HeadShape:
    """The published shape of one method's head (dims as in the papers' ResNet-50 setups)."""

    hidden_dim: int
    out_dim: int
    num_layers: int
    batch_norm: bool = True
    last_batch_norm: bool = False

    def build(self, in_dim: int) -> MLPHead:
        """An :class:`MLPHead` of this shape reading ``in_dim`` features."""
        return MLPHead(in_dim, self.hidden_dim, self.out_dim, self.num_layers, self.batch_norm, self.last_batch_norm)


# A predictor reads its projector's output: HEAD_SHAPES["byol_predictor"].build(256).
# Barlow Twins' and VICReg's official last linear has no bias; it is kept here, where both
# losses centre the embeddings so that bias receives no gradient.
HEAD_SHAPES: dict[str, HeadShape] = {
    "simclr_projector": HeadShape(2048, 128, 2),  # Chen et al. 2020, sec. 2.1 (g(.), one hidden layer)
    "moco_v2_projector": HeadShape(2048, 128, 2, batch_norm=False),  # Chen et al. 2020b, MLP head, no BN
    "moco_v3_projector": HeadShape(4096, 256, 3, last_batch_norm=True),  # Chen, Xie & He 2021, sec. 4
    "moco_v3_predictor": HeadShape(4096, 256, 2),
    "byol_projector": HeadShape(4096, 256, 2),  # Grill et al. 2020, sec. 3.3
    "byol_predictor": HeadShape(4096, 256, 2),
    "simsiam_projector": HeadShape(2048, 2048, 3, last_batch_norm=True),  # Chen & He 2021, sec. 4.1
    "simsiam_predictor": HeadShape(512, 2048, 2),  # bottleneck: hidden = out / 4
    "barlow_twins_projector": HeadShape(8192, 8192, 3),  # Zbontar et al. 2021, sec. 3
    "vicreg_projector": HeadShape(8192, 8192, 3),  # Bardes et al. 2022, sec. 4.1
    "swav_projector": HeadShape(2048, 128, 2),  # Caron et al. 2020, official code: hidden_mlp 2048, feat_dim 128
    "nnclr_projector": HeadShape(2048, 256, 3, last_batch_norm=True),  # Dwibedi et al. 2021, implementation details
    "nnclr_predictor": HeadShape(4096, 256, 2),
    # LeJEPA's minimal example: torchvision MLP(D, [2048, 2048, proj_dim]) with batch norm, proj_dim 128 (16 in its run)
    "lejepa_projector": HeadShape(2048, 128, 3),
}


def configured_head(shape: str, in_dim: int, hidden_dim: int, out_dim: int) -> MLPHead:
    """The published head ``HEAD_SHAPES[shape]`` (layers, batch norms) with the configured widths."""
    return dataclasses.replace(HEAD_SHAPES[shape], hidden_dim=hidden_dim, out_dim=out_dim).build(in_dim)


class WeightNormLinear(nn.Module):
    """A bias-free linear map whose rows are weight-normalised, ``w_k = g_k v_k / |v_k|`` (Salimans & Kingma 2016).

    DINO's last layer (``nn.utils.weight_norm(nn.Linear(bottleneck, K, bias=False))`` with the norms
    filled with 1). With ``learn_norm=False`` (DINO's ``norm_last_layer=True``) the norms stay 1: every
    prototype is a unit vector and only its direction learns.

    Args:
        in_dim: input features.
        out_dim: outputs (DINO's ``K`` prototypes).
        learn_norm: whether the row norms ``g`` take a gradient.

    Attributes:
        direction: ``[out_dim, in_dim]`` the unnormalised rows ``v`` (``nn.Linear``'s initialisation).
        norm: ``[out_dim, 1]`` the row norms ``g``, initialised to 1.
    """

    def __init__(self, in_dim: int, out_dim: int, learn_norm: bool = False) -> None:
        super().__init__()
        self.direction = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.direction, a=math.sqrt(5))  # nn.Linear's default
        self.norm = nn.Parameter(torch.ones(out_dim, 1), requires_grad=learn_norm)

    @property
    def weight(self) -> Tensor:
        """``[out_dim, in_dim]``: ``g * v / |v|`` row by row."""
        return self.norm * F.normalize(self.direction, dim=1)

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        """``[..., in_dim] -> [..., out_dim]``; ``frozen`` lets no gradient reach the layer (DINO's frozen last layer:
        its parameters keep ``grad=None``, so the optimizer leaves them as they are), while ``x`` still gets one."""
        weight = self.weight
        return F.linear(x, weight.detach() if frozen else weight)


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, sec. 3.1 and appendix): an MLP, L2 normalisation, then a
    weight-normalised bias-free layer onto ``K`` prototypes.

    The MLP has ``num_layers`` linear layers ``in -> hidden -> ... -> bottleneck`` with GELU between them
    (batch norm before each GELU when ``batch_norm``: DINO's ``use_bn_in_head``, off for ViTs) and DINO's
    initialisation (truncated normal, std 0.02, zero biases). It reads ``[..., in_dim]``: pooled ``[B, D]``
    embeddings or ``[B, T, D]`` unit tokens (iBOT's patches), flattened for the batch norm.

    Args:
        in_dim: input features (the encoder's width).
        hidden_dim: width of the hidden layers (DINO: 2048).
        bottleneck_dim: width of the normalised bottleneck (DINO: 256).
        out_dim: ``K`` (DINO: 65536).
        num_layers: linear layers of the MLP, at least 1 (DINO: 3).
        batch_norm: batch norm after each hidden linear layer.
        norm_last_layer: keep the last layer's row norms at 1 (DINO's default; ``False`` learns them).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        out_dim: int,
        num_layers: int = 3,
        batch_norm: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, bottleneck_dim, out_dim, num_layers) < 1:
            raise ValueError("DINOHead dimensions and num_layers must be >= 1")
        widths = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < num_layers - 1:
                layers.extend([nn.BatchNorm1d(b)] if batch_norm else [])
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.batch_norm = batch_norm  # the MLP mixes the samples (tokens) of a call
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, learn_norm=not norm_last_layer)

    def bottleneck(self, x: Tensor) -> Tensor:
        """``[..., in_dim] -> [..., bottleneck_dim]``, L2-normalised."""
        flat = self.mlp(x.reshape(-1, x.shape[-1]))
        return F.normalize(flat, dim=-1).reshape(*x.shape[:-1], flat.shape[-1])

    def forward(self, x: Tensor, freeze_last_layer: bool = False) -> Tensor:
        """``[..., in_dim] -> [..., out_dim]`` prototype scores; ``freeze_last_layer`` as :meth:`WeightNormLinear.forward`."""
        return self.last_layer(self.bottleneck(x), frozen=freeze_last_layer)


def vocab_head(encoder: Encoder) -> nn.Module | None:
    """A ``Linear(D, V)`` onto the encoder's unit vocabulary, or None when the encoder has its own
    (:meth:`Encoder.prediction_head`, e.g. BERT's tied projection), which the objective then calls.

    Raises:
        ValueError: If the encoder has no unit vocabulary.
    """
    if encoder.vocab_size is None:
        raise ValueError(f"{type(encoder).__name__} has no unit vocabulary: language-model objectives need token units")
    return None if encoder.prediction_head() is not None else nn.Linear(encoder.hidden_size, encoder.vocab_size)
