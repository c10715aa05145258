"""Graph data for pretraining: sources, datasets, collates, the processor and the per-step views.

Sources (``data.source``): a prepared offline set (``mmssl data prepare wordnet-graph |
molecules | solubility``), or the user's own PyG data: ``pyg`` calls ``data.path`` =
``"module:callable"`` with ``data.kwargs`` (any ``torch_geometric.datasets`` class, or
a function returning a ``Data`` or a list of them), ``file`` reads a ``torch.save``-d
``Data`` / list of ``Data``. Node-level data (``data.level=node``) is one graph, trained
on ego-network mini-batches (``data.mode=sampled``) or whole (``full``); graph-level data
is a list of graphs.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch_geometric.data import Data
from torch_geometric.sampler import NodeSamplerInput

from domains.graph import augment

log = logging.getLogger(__name__)
from domains.graph.sampling import EgoNetSampler
from domains.graph.units import ego_batch, full_batch, graphs_batch
from mmssl.types import Batch

VIEWS = ("none", "graphcl", "bgrl", "gpt_gnn")
PROCESSOR_FILE = "graph_processor.json"


@dataclass(frozen=True)
class GraphDataConfig:
    """A recipe's ``data:`` section for graphs."""

    source: Literal["prepared", "pyg", "file"] = "prepared"
    name: str = "wordnet-graph"  # source=prepared: a `mmssl data prepare` name
    path: str | None = None  # source=pyg: "module:callable" (e.g. torch_geometric.datasets:KarateClub); file: a .pt
    kwargs: dict[str, Any] = field(default_factory=dict)  # source=pyg: arguments of the callable
    level: Literal["node", "graph"] = "node"
    mode: Literal["sampled", "full"] = "sampled"  # node level: ego-network mini-batches, or the whole graph per step
    num_neighbors: tuple[int, ...] = (10, 5)  # per hop (GraphSAGE uses 25, 10); -1 takes every neighbour
    eval_num_neighbors: tuple[int, ...] | None = None  # probes and fine-tuning; None: num_neighbors
    max_features: int | None = None  # keep the first N feature columns (the builders sort them by frequency)
    max_items: int | None = None  # only the first N seed nodes / graphs (quick experiments)
    views: Literal["none", "graphcl", "bgrl", "gpt_gnn"] = "none"
    augmentations: tuple[str, ...] = ("drop_nodes", "subgraph")  # graphcl: each view applies one, drawn per batch
    drop_node_p: float = 0.2  # GraphCL: 20% of the nodes
    drop_edge_p: tuple[float, float] = (0.2, 0.4)  # per view (BGRL's Coauthor/Amazon settings are 0.2-0.5)
    mask_feature_p: tuple[float, float] = (0.2, 0.3)  # per view
    subgraph_hops: int = 1
    gen_attr_ratio: float = 0.3  # GPT-GNN: share of nodes whose attributes are generated
    gen_edge_ratio: float = 0.3  # GPT-GNN: share of the other nodes' edges removed and generated

    def __post_init__(self) -> None:
        if self.source != "prepared" and not self.path:
            raise ValueError(f"data.path is required when data.source={self.source}")
        unknown = [a for a in self.augmentations if a not in augment.AUGMENTATIONS]
        if unknown:
            raise ValueError(f"data.augmentations: unknown {unknown[0]!r}; known: {', '.join(augment.AUGMENTATIONS)}")
        for name in ("drop_node_p", "gen_attr_ratio", "gen_edge_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"data.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("drop_edge_p", "mask_feature_p"):
            if any(not 0.0 <= p < 1.0 for p in getattr(self, name)):
                raise ValueError(f"data.{name} must be in [0, 1), got {getattr(self, name)}")
        if any(k == 0 or k < -1 for k in (*self.num_neighbors, *(self.eval_num_neighbors or ()))):
            raise ValueError("data.num_neighbors / data.eval_num_neighbors: counts must be positive or -1")


@dataclass
class GraphProcessor:
    """What an export needs to read graphs as its encoder was trained: saved as ``graph_processor.json``."""

    level: str = "node"
    in_channels: int = 1
    num_neighbors: list[int] = field(default_factory=lambda: [10, 5])
    eval_num_neighbors: list[int] = field(default_factory=lambda: [10, 5])
    max_features: int | None = None
    source: str = ""

    def save_pretrained(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / PROCESSOR_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "GraphProcessor":
        file = Path(path) / PROCESSOR_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{path} has no {PROCESSOR_FILE} (not a graph run or export)")
        return cls(**json.loads(file.read_text()))


# ---------------------------------------------------------------------------- sources
def _call(spec: str, kwargs: dict[str, Any]) -> Any:
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"data.path={spec!r}: expected 'module:callable', e.g. torch_geometric.datasets:KarateClub")
    return getattr(importlib.import_module(module), name)(**kwargs)


def as_graphs(obj: Any) -> Data | list[Data]:
    """A PyG ``Data``, or a list of them from any PyG ``Dataset`` / sequence."""
    if isinstance(obj, Data):
        return obj
    return [obj[i] for i in range(len(obj))]


def load_source(cfg: GraphDataConfig) -> Data | list[Data]:
    """The configured graph (node level) or graphs (graph level), before feature truncation."""
    if cfg.source == "prepared":
        from domains.graph.builders import load_prepared

        obj: Any = load_prepared(cfg.name)
    elif cfg.source == "pyg":
        obj = _call(cfg.path, cfg.kwargs)
    else:
        obj = torch.load(cfg.path, weights_only=False)  # the user's own file: PyG objects are pickled
    graphs = as_graphs(obj)
    name = cfg.path or cfg.name
    if cfg.level == "node":
        if isinstance(graphs, list):
            if len(graphs) != 1:
                raise ValueError(f"data.level=node needs one graph, got {len(graphs)}; use data.level=graph")
            graphs = graphs[0]
        problem = graph_problem(graphs)
        if problem:
            raise ValueError(f"graph {name}: {problem}")
        return truncate_features(graphs, cfg.max_features)
    if isinstance(graphs, Data):
        raise ValueError("data.level=graph needs a list of graphs, got one Data; use data.level=node")
    return [truncate_features(g, cfg.max_features) for g in usable_graphs(graphs, name)]


def graph_problem(data: Data) -> str | None:
    """Why ``data`` cannot be trained on, or None: missing or non-2-D features, NaN/inf features,
    no edges, or edges that point to nodes the graph does not have."""
    x = getattr(data, "x", None)
    if x is None:
        return "it has no node features (data.x is None)"
    if x.dim() != 2 or x.shape[0] != data.num_nodes:
        return f"data.x has shape {tuple(x.shape)}, expected [num_nodes={data.num_nodes}, num_features]"
    values = x if x.layout == torch.strided else (x.values() if x.layout == torch.sparse_csr else x.coalesce().values())
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        return "data.x holds NaN or inf values"
    edges = getattr(data, "edge_index", None)
    if edges is None or edges.numel() == 0:
        return "it has no edges (edge_index is empty)"
    lowest, highest = int(edges.min()), int(edges.max())
    if lowest < 0 or highest >= data.num_nodes:
        return f"edge_index points to node {lowest if lowest < 0 else highest}, " \
               f"but the graph has nodes 0..{data.num_nodes - 1}"
    return None


def usable_graphs(graphs: Sequence[Data], name: str) -> list[Data]:
    """The graphs of a graph-level dataset that :func:`graph_problem` accepts and whose feature width
    is the first good graph's; each other graph is logged by index and skipped, and counted."""
    keep: list[Data] = []
    for i, g in enumerate(graphs):
        problem = graph_problem(g)
        if problem is None and keep and g.x.shape[1] != keep[0].x.shape[1]:
            problem = f"it has {g.x.shape[1]} node features, the dataset's graphs have {keep[0].x.shape[1]}"
        if problem:
            log.warning("%s: graph %d skipped: %s", name, i, problem)
        else:
            keep.append(g)
    if not keep:
        raise ValueError(f"{name}: none of its {len(graphs)} graphs is usable (see the warnings above)")
    if len(keep) < len(graphs):
        log.warning("%s: %d of %d graphs skipped", name, len(graphs) - len(keep), len(graphs))
    return keep


def truncate_features(data: Data, max_features: int | None) -> Data:
    """``data`` with only its first ``max_features`` feature columns (dense or sparse CSR ``x``)."""
    if max_features is None or data.x.shape[1] <= max_features:
        return data
    x = data.x
    if x.layout == torch.sparse_csr:
        coo = x.to_sparse_coo().coalesce()
        keep = coo.indices()[1] < max_features
        x = torch.sparse_coo_tensor(coo.indices()[:, keep], coo.values()[keep],
                                    (x.shape[0], max_features)).coalesce().to_sparse_csr()
    else:
        x = x[:, :max_features]
    out = data.clone()
    out.x = x
    return out


# ---------------------------------------------------------------------------- datasets and collates
class Items(torch.utils.data.Dataset):
    """Map-style rows over a sequence (node ids or graphs), optionally with labels."""

    def __init__(self, items: Sequence[Any], labels: Sequence[int] | None = None) -> None:
        self.items, self.labels = items, labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"item": self.items[i], "label": -1 if self.labels is None else int(self.labels[i])}


def ego_collate(graph: Data, num_neighbors: Sequence[int], with_labels: bool) -> Callable[[list[dict]], Batch]:
    """Rows of seed node ids -> ego-network rows (:func:`domains.graph.units.ego_batch`).

    The neighbour sample is seeded by the seed ids, so a batch is the same every time it is
    collated (exact resume, reproducible probes), and independent of torch's global RNG.
    """
    sampler = EgoNetSampler(graph.edge_index, graph.num_nodes, list(num_neighbors))

    def collate(rows: list[dict]) -> Batch:
        seeds = torch.tensor([int(r["item"]) for r in rows], dtype=torch.long)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash(tuple(seeds.tolist())) % (2**31))
            sample = sampler.sample_from_nodes(NodeSamplerInput(input_id=torch.arange(len(seeds)), node=seeds))
        extras = {"labels": torch.tensor([r["label"] for r in rows])} if with_labels else {}
        return ego_batch(sample, graph.x, **extras)

    return collate


def full_collate(graph: Data) -> Callable[[list[dict]], Batch]:
    """The whole graph, whatever the rows (``data.mode=full``; one row per step), densified once."""
    batch = full_batch(graph)
    return lambda rows: batch


def graphs_collate(with_labels: bool) -> Callable[[list[dict]], Batch]:
    """Rows of graphs -> one grid row per graph (PyG's ``Batch.from_data_list``)."""

    def collate(rows: list[dict]) -> Batch:
        extras = {"labels": torch.tensor([r["label"] for r in rows])} if with_labels else {}
        return graphs_batch([r["item"] for r in rows], **extras)

    return collate


# ---------------------------------------------------------------------------- per-step views
class GraphViews:
    """The per-step transform of ``data.views`` (on the training device, torch's global RNG).

    ``graphcl``: two views, each made by one augmentation drawn from ``data.augmentations``
    (GraphCL, You et al. 2020); ``bgrl``: view ``i`` masks features with
    ``mask_feature_p[i]`` and drops edges with ``drop_edge_p[i]`` (BGRL, Thakoor et al.
    2022; GRACE); ``gpt_gnn``: :func:`augment.generation_split`.
    """

    def __init__(self, cfg: GraphDataConfig) -> None:
        self.cfg = cfg

    def _graphcl_view(self, batch: Batch) -> Batch:
        cfg = self.cfg
        name = cfg.augmentations[int(torch.randint(len(cfg.augmentations), ()))]
        args = {"mask_features": (cfg.mask_feature_p[0],), "drop_edges": (cfg.drop_edge_p[0],),
                "drop_nodes": (cfg.drop_node_p,), "subgraph": (cfg.subgraph_hops,)}[name]
        return augment.AUGMENTATIONS[name](batch, *args)

    def __call__(self, batch: Batch) -> Batch:
        cfg = self.cfg
        if cfg.views == "gpt_gnn":
            return augment.generation_split(batch, cfg.gen_attr_ratio, cfg.gen_edge_ratio)
        if cfg.views == "graphcl":
            views = (self._graphcl_view(batch), self._graphcl_view(batch))
        else:
            views = tuple(augment.drop_edges(augment.mask_features(batch, pf), pe)
                          for pf, pe in zip(cfg.mask_feature_p, cfg.drop_edge_p))
        return batch.replace(extras={**batch.extras, "views": views})
