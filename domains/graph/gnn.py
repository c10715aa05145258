"""PyG's basic GNNs (GCN, GraphSAGE, GAT, GIN) as a Hub-mixin module, and the encoder adapter.

:class:`GraphBackbone` depends only on torch, torch_geometric and huggingface_hub, so an
export loads back without mmssl's training code::

    from domains.graph.gnn import GraphBackbone
    gnn = GraphBackbone.from_pretrained("runs/dgi/export")     # config.json + model.safetensors
    h = gnn(data.x, data.edge_index)                            # [num_nodes, hidden_channels]

:class:`GNNEncoder` adapts it to mmssl's :class:`~mmssl.encoder.Encoder` protocol on the
unit grid of :mod:`domains.graph.units`: the real units are flattened, run through the
GNN over ``extras[Extra.EDGE_INDEX]`` and put back on the grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv
from torch_geometric.nn.models import GAT, GCN, GIN, GraphSAGE

from domains.graph.units import compact_graph, layout_of
from mmssl.encoder import Encoder
from mmssl.types import Batch, EncoderOutput

ARCHS = {"gcn": GCN, "sage": GraphSAGE, "gat": GAT, "gin": GIN}
Arch = Literal["gcn", "sage", "gat", "gin"]


class GraphBackbone(nn.Module, PyTorchModelHubMixin, library_name="mmssl", tags=["graph-ml", "gnn"]):
    """A PyG basic GNN (``torch_geometric.nn.models``) plus a learnable input mask token.

    Args:
        arch: ``gcn`` (Kipf & Welling 2017), ``sage`` (Hamilton et al. 2017, mean
            aggregation), ``gat`` (Velickovic et al. 2018) or ``gin`` (Xu et al. 2019).
        in_channels: node features ``C``.
        hidden_channels: width of every layer, and of the output.
        num_layers: message-passing layers (hops of context).
        dropout: dropout between layers.
        norm: PyG normalisation name between layers (``batch_norm``, ``layer_norm``) or None.
        heads: attention heads (``gat`` only; the hidden width is split between them).
        jk: PyG jumping knowledge (``cat``, ``max``) or None (the last layer's output).
    """

    def __init__(
        self,
        arch: str = "sage",
        in_channels: int = 1,
        hidden_channels: int = 128,
        num_layers: int = 2,
        dropout: float = 0.0,
        norm: str | None = None,
        heads: int = 1,
        jk: str | None = None,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"encoder.arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        kwargs = {"heads": heads} if arch == "gat" else {}
        self.gnn = ARCHS[arch](in_channels, hidden_channels, num_layers, dropout=dropout, norm=norm, jk=jk, **kwargs)
        # GraphMAE's [MASK] token (Hou et al. 2022): masked nodes' input features are replaced by it
        self.mask_token = nn.Parameter(torch.zeros(in_channels))
        self.arch, self.in_channels, self.out_dim = arch, in_channels, hidden_channels

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """``x [N, C]``, ``edge_index [2, E]`` -> node representations ``[N, hidden_channels]``."""
        return self.gnn(x, edge_index)

    def layer_outputs(self, x: Tensor, edge_index: Tensor) -> tuple[Tensor, list[Tensor]]:
        """:meth:`forward` that also returns every message-passing layer's output.

        PyG's ``BasicGNN.forward`` step by step (without its edge weights / attributes and
        neighbour trimming, which :meth:`forward` never passes): layer ``i``'s output is what
        layer ``i + 1`` reads (after activation, norm and dropout); the last layer's is the raw
        convolution, as in ``forward``, unless ``jk`` is set.

        Returns:
            ``(forward(x, edge_index) [N, hidden_channels], [num_layers tensors [N, hidden_channels]])``.
        """
        gnn, outputs = self.gnn, []
        for i, (conv, norm) in enumerate(zip(gnn.convs, gnn.norms)):
            x = conv(x, edge_index)
            if i < gnn.num_layers - 1 or gnn.jk_mode is not None:
                if gnn.act is not None and gnn.act_first:
                    x = gnn.act(x)
                x = norm(x, None, None) if gnn.supports_norm_batch else norm(x)
                if gnn.act is not None and not gnn.act_first:
                    x = gnn.act(x)
                x = gnn.dropout(x)
            outputs.append(x)
        out = gnn.jk(outputs) if hasattr(gnn, "jk") else x
        return (gnn.lin(out) if hasattr(gnn, "lin") else out), outputs

    def conv(self, in_dim: int, out_dim: int) -> nn.Module:
        """One fresh message-passing layer of this architecture (GraphMAE's single-layer decoder)."""
        if self.arch == "gin":
            return GINConv(nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim)))
        return {"gcn": GCNConv, "sage": SAGEConv, "gat": GATConv}[self.arch](in_dim, out_dim)


class GNNEncoder(Encoder):
    """:class:`GraphBackbone` on graph unit batches.

    ``hidden`` is ``[B, T, D]`` (zeros at padding); ``summary`` is the root unit's vector for
    ego-network rows (node-level tasks) and None otherwise, so ``pooled()`` is then the
    mean over the row's nodes (the graph readout of graph-level tasks).
    """

    pipeline_tag = "graph-ml"

    def __init__(self, model: GraphBackbone) -> None:
        super().__init__()
        self.model = model
        self.hidden_size = model.out_dim
        self.unit_dim = model.in_channels

    def node_inputs(self, batch: Batch, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(x [N, C], edge_index [2, E], keep [N])`` of the batch's real units, masked ones replaced."""
        units = batch.units
        if units.ndim != 3 or units.shape[-1] != self.unit_dim:
            raise ValueError(f"graph units must be [B, T, {self.unit_dim}] node features, got {tuple(units.shape)}")
        keep, edge_index = compact_graph(batch)
        x = units.reshape(-1, units.shape[-1])
        if mask is not None:
            x = torch.where(mask.reshape(-1, 1), self.model.mask_token.to(x.dtype), x)
        return (x if len(keep) == x.shape[0] else x[keep]), edge_index, keep

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        """Encode the batch's graph; ``mask`` (``[B, T]``) replaces those nodes' input features by the mask token.

        With ``all_layers``, ``layers`` is ``(input features [B, T, C] after masking, then each
        message-passing layer's output [B, T, D])``: ``num_layers + 1`` entries, the input first
        as a transformer's embedding output is (data2vec averages the top K of the others).
        """
        layout = layout_of(batch)
        x, edge_index, keep = self.node_inputs(batch, mask)
        shape = batch.padding_mask.shape
        layers = None
        if all_layers:
            h, outputs = self.model.layer_outputs(x, edge_index)
            layers = tuple(scatter_to_grid(o, keep, shape) for o in (x, *outputs))
        else:
            h = self.model(x, edge_index)  # [N, D]
        hidden = scatter_to_grid(h, keep, shape)
        summary = hidden[:, 0] if layout == "ego" else None
        return EncoderOutput(hidden=hidden, padding_mask=batch.padding_mask, layers=layers, summary=summary)

    def unit_decoder(self, in_dim: int, out_dim: int) -> nn.Module:
        """A one-layer GNN decoder over the batch's graph (GraphMAE, Hou et al. 2022, sec. 3.3)."""
        return GraphUnitDecoder(self.model.conv(in_dim, out_dim))

    def export(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir))


def scatter_to_grid(h: Tensor, keep: Tensor, shape: torch.Size | tuple[int, int]) -> Tensor:
    """Rows ``h [N, D]`` of the grid cells ``keep [N]`` -> ``[B, T, D]`` with zeros elsewhere (differentiable)."""
    b, t = shape
    if len(keep) == b * t:  # no padding: nothing to scatter
        return h.view(b, t, -1)
    out = h.new_zeros(b * t, h.shape[-1]).index_copy(0, keep, h)
    return out.view(b, t, -1)


class GraphUnitDecoder(nn.Module):
    """Applies one message-passing layer to ``[B, T, D]`` unit vectors over the batch's graph."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, hidden: Tensor, batch: Batch) -> Tensor:
        keep, edge_index = compact_graph(batch)
        h = self.conv(hidden.reshape(-1, hidden.shape[-1])[keep], edge_index)
        return scatter_to_grid(h, keep, batch.padding_mask.shape)
