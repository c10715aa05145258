"""Heads that several objectives build: MLP projectors/predictors with the papers' shapes, and vocabulary heads.

Nothing here knows a modality: an :class:`MLPHead` maps ``[B, D]`` embeddings (or ``[N, D]``
unit vectors), a vocabulary head ``[N, D]`` outputs to ``[N, V]`` scores.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

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
}


def configured_head(shape: str, in_dim: int, hidden_dim: int, out_dim: int) -> MLPHead:
    """The published head ``HEAD_SHAPES[shape]`` (layers, batch norms) with the configured widths."""
    return dataclasses.replace(HEAD_SHAPES[shape], hidden_dim=hidden_dim, out_dim=out_dim).build(in_dim)


def vocab_head(encoder: Encoder) -> nn.Module | None:
    """A ``Linear(D, V)`` onto the encoder's unit vocabulary, or None when the encoder has its own
    (:meth:`Encoder.prediction_head`, e.g. BERT's tied projection), which the objective then calls.

    Raises:
        ValueError: If the encoder has no unit vocabulary.
    """
    if encoder.vocab_size is None:
        raise ValueError(f"{type(encoder).__name__} has no unit vocabulary: language-model objectives need token units")
    return None if encoder.prediction_head() is not None else nn.Linear(encoder.hidden_size, encoder.vocab_size)
