"""The ``encoder:`` section of graph recipes and the encoder factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from domains.graph.gnn import ARCHS, GNNEncoder, GraphBackbone


@dataclass(frozen=True)
class GraphEncoderConfig:
    """A recipe's ``encoder:`` section for graphs: one of PyG's basic GNNs.

    ``arch``: ``gcn``, ``sage`` (GraphSAGE-mean), ``gat`` or ``gin``. DGI's transductive
    encoder is a one-layer GCN of width 512; GraphMAE's a 2-layer GAT (Cora: 512 wide,
    4 heads); BGRL's a 2-layer GCN; GraphCL's molecules a 5-layer GIN of width 300.
    """

    arch: Literal["gcn", "sage", "gat", "gin"] = "sage"
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.0
    norm: str | None = None  # between layers: batch_norm, layer_norm, ... (PyG names)
    heads: int = 1  # gat only; hidden_size is split between the heads
    jk: Literal["cat", "max"] | None = None  # jumping knowledge over the layers (Xu et al. 2018)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"encoder.arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.hidden_size < 1 or self.num_layers < 1 or self.heads < 1:
            raise ValueError("encoder.hidden_size, encoder.num_layers and encoder.heads must be >= 1")
        if self.hidden_size % self.heads:
            raise ValueError(f"encoder.hidden_size={self.hidden_size} is not divisible by encoder.heads={self.heads}")


def build_graph_encoder(cfg: GraphEncoderConfig, in_channels: int) -> GNNEncoder:
    """A freshly initialised GNN reading ``in_channels`` node features."""
    return GNNEncoder(
        GraphBackbone(
            arch=cfg.arch,
            in_channels=in_channels,
            hidden_channels=cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout,
            norm=cfg.norm,
            heads=cfg.heads,
            jk=cfg.jk,
        )
    )
