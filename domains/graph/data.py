"""Graph data for pretraining: sources, datasets, collates, the processor and the per-step views.

Sources (``data.source``): a prepared offline set (``mmssl data prepare wordnet-graph |
molecules | solubility``), or the user's own PyG data: ``pyg`` builds the dataset class
``data.name`` of ``torch_geometric.datasets`` (e.g. ``KarateClub``; ``Planetoid`` with
``data.kwargs={name: Cora}``) or calls a function a package registered under the entry-point
group ``mmssl.graph_sources``, with ``data.kwargs``; ``file`` reads a ``torch.save``-d
``Data`` / list of ``Data`` / PyG processed file. A recipe names data, never code: no other
callable can be reached, and a ``.pt`` is unpickled with only PyG's own classes allowed
(``data.trust_pickle`` lifts that for a file the user trusts). Node-level data
(``data.level=node``) is one graph, trained on ego-network mini-batches (``data.mode=sampled``)
or whole (``full``); graph-level data is a list of graphs.
"""

from __future__ import annotations

import inspect
import json
import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

import torch
from torch_geometric.data import Data, Dataset, HeteroData, InMemoryDataset
from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
from torch_geometric.data.storage import BaseStorage, EdgeStorage, GlobalStorage, NodeStorage
from torch_geometric.sampler import NodeSamplerInput

from domains.graph import augment
from domains.graph.sampling import EgoNetSampler
from domains.graph.units import csr_features, ego_batch, full_batch, graphs_batch
from mmssl.config import ConfigError, short_repr
from mmssl.datasets import cache_root
from mmssl.types import Batch, Extra

log = logging.getLogger(__name__)

VIEWS = ("none", "graphcl", "bgrl", "gpt_gnn")
PROCESSOR_FILE = "graph_processor.json"
GRAPH_SOURCES_GROUP = "mmssl.graph_sources"  # entry points: name -> callable(**data.kwargs) -> Data | list[Data]
PYG_PATH_PREFIX = "torch_geometric.datasets:"  # the older spelling data.path=torch_geometric.datasets:NAME
HOW_TO_NAME_A_PYG_SOURCE = (
    "set data.name to a dataset class of torch_geometric.datasets (e.g. KarateClub; Planetoid with "
    "data.kwargs={name: Cora}; TUDataset with data.kwargs={name: MUTAG}) or to a graph source a package "
    f"registers under the entry-point group {GRAPH_SOURCES_GROUP}"
)


@dataclass(frozen=True)
class GraphDataConfig:
    """A recipe's ``data:`` section for graphs."""

    source: Literal["prepared", "pyg", "file"] = "prepared"
    # source=prepared: a `mmssl data prepare` name; source=pyg: a torch_geometric.datasets class (KarateClub,
    # Planetoid, TUDataset, ...) or a name registered under the entry-point group mmssl.graph_sources
    name: str = "wordnet-graph"
    path: str | None = None  # source=file: a .pt written by torch.save (pyg also reads "torch_geometric.datasets:NAME")
    kwargs: dict[str, Any] = field(default_factory=dict)  # source=pyg: arguments of the class, e.g. {name: Cora}
    # source=file: also unpickle a .pt that needs more than PyG's own classes. Unpickling RUNS CODE stored in
    # the file: set it only for a file you made yourself or trust as you would a program
    trust_pickle: bool = False
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
        if self.source == "file" and not self.path:
            raise ConfigError("data.path is required when data.source=file (a .pt file written by torch.save)")
        if self.source == "pyg" and self.path and not self.path.startswith(PYG_PATH_PREFIX):
            raise ConfigError(
                f"data.path={short_repr(self.path)}: data.source=pyg reads a dataset by name, not a "
                f"module path: {HOW_TO_NAME_A_PYG_SOURCE}"
            )
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
    def from_pretrained(cls, path: str | Path) -> GraphProcessor:
        file = Path(path) / PROCESSOR_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{path} has no {PROCESSOR_FILE} (not a graph run or export)")
        return cls(**json.loads(file.read_text()))


# ---------------------------------------------------------------------------- sources
# What torch.save writes for PyG's Data and HeteroData (and an InMemoryDataset's processed file) besides tensors,
# dicts and lists: PyG's own storage classes, no code. torch_geometric allow-lists Data and HeteroData itself.
PYG_PICKLE_CLASSES = (
    Data,
    HeteroData,
    BaseStorage,
    NodeStorage,
    EdgeStorage,
    GlobalStorage,
    DataEdgeAttr,
    DataTensorAttr,
)


def pyg_safe_globals() -> torch.serialization.safe_globals:
    """A context in which ``torch.load(weights_only=True)`` also accepts :data:`PYG_PICKLE_CLASSES`.

    Only the classes not allowed already: leaving the context removes what it added, and PyG's own
    process-wide allowances (``Data``, ``HeteroData``) must outlive it.
    """
    allowed = set(torch.serialization.get_safe_globals())
    return torch.serialization.safe_globals([c for c in PYG_PICKLE_CLASSES if c not in allowed])


def pyg_name(cfg: GraphDataConfig) -> str:
    """The dataset of ``data.source=pyg``: ``data.name``, or NAME of ``data.path=torch_geometric.datasets:NAME``."""
    return cfg.path[len(PYG_PATH_PREFIX) :] if cfg.path else cfg.name


def pyg_dataset_class(name: str) -> type | None:
    """The dataset class ``name`` of ``torch_geometric.datasets`` (one its ``__all__`` lists), or None."""
    import torch_geometric.datasets as pyg_datasets

    cls = getattr(pyg_datasets, name, None) if name in pyg_datasets.__all__ else None
    return cls if isinstance(cls, type) and issubclass(cls, Dataset) else None


def registered_graph_source(name: str) -> Callable[..., Any] | None:
    """The callable a package registered as ``name`` in the entry-point group ``mmssl.graph_sources``, or None."""
    found = entry_points(group=GRAPH_SOURCES_GROUP, name=name)
    return next(iter(found)).load() if found else None


def load_pyg(name: str, kwargs: dict[str, Any], key: str = "data.name") -> Any:
    """``data.source=pyg``: PyG's dataset class ``name`` or the registered graph source ``name``, called with ``kwargs``.

    A class that keeps files (a ``root`` argument) gets ``<mmssl cache>/pyg/<name>`` unless ``kwargs`` names a root.
    ``key`` is the setting that named it, for the error message.

    Raises:
        ConfigError: ``name`` is neither (the message says how to choose one), or ``kwargs`` does not fit it.
    """
    cls = pyg_dataset_class(name)
    source = cls or registered_graph_source(name)
    if source is None:
        raise ConfigError(
            f"{key}={short_repr(name)} is not a PyG dataset or a registered graph source: {HOW_TO_NAME_A_PYG_SOURCE}"
        )
    if cls is not None and "root" in inspect.signature(cls).parameters and "root" not in kwargs:
        kwargs = {**kwargs, "root": str(cache_root() / "pyg" / name)}
    try:
        inspect.signature(source).bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"data.kwargs does not fit {name}: {e}") from None
    return source(**kwargs)


def load_file(path: Path, trust_pickle: bool) -> Any:
    """``data.source=file``: what ``torch.save`` wrote to ``path``, unpickled with only PyG's own classes allowed.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: ``path`` is a folder, is not a ``torch.save`` file, or needs classes beyond PyG's
            (the message names them and ``data.trust_pickle``).
    """
    if not path.is_file():
        if path.is_dir():
            raise ValueError(f"data.path={path} is a folder; expected a .pt file written by torch.save")
        raise FileNotFoundError(f"data.path={path}: no such file (expected a .pt file written by torch.save)")
    try:
        with pyg_safe_globals(), csr_features():
            # weights_only=False (data.trust_pickle) runs whatever code the file holds
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    # torch.load reports a file it cannot parse with whatever its parser hit
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError) as e:
        needed = [] if trust_pickle else _unsafe_globals(path)
        if needed:
            raise ValueError(
                f"data.path={path} needs more than PyG's own classes to load ({', '.join(needed[:3])}), and loading "
                "those runs code stored in the file. If you made the file yourself or trust it as you would a "
                "program, set data.trust_pickle=true"
            ) from None
        raise ValueError(
            f"data.path={path} is not a file written by torch.save, or it is damaged; "
            "save your graph with torch.save(data, path)"
        ) from e


def _unsafe_globals(path: Path) -> list[str]:
    """The classes and functions a ``torch.save`` file needs beyond PyG's and torch's own ([] if it cannot tell)."""
    try:
        with pyg_safe_globals():
            return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, pickle.UnpicklingError):  # not a zip-format torch.save file
        return []


def as_graphs(obj: Any, where: str) -> Data | list[Data]:
    """A PyG ``Data``, or a list of them, from a ``Data``, a list/tuple of them, a PyG ``Dataset`` or a PyG
    processed file's ``(data, slices[, class])``.

    Raises:
        ValueError: ``obj`` is something else, holds no graphs or holds a graph that is not a ``Data``.
    """
    if isinstance(obj, Data):
        return obj
    if (
        isinstance(obj, tuple)
        and len(obj) in (2, 3)
        and isinstance(obj[0], dict | Data)
        and isinstance(obj[1], dict | None)
        and obj[2:] in ((), (Data,), (HeteroData,))
    ):
        return as_graphs(_processed_graphs(obj), where)
    if not isinstance(obj, list | tuple | Dataset):
        raise ValueError(f"{where} holds {_kind(obj)}; expected a PyG Data, a list of Data or a PyG dataset")
    graphs = [obj[i] for i in range(len(obj))]
    if not graphs:
        raise ValueError(f"{where} holds no graphs (an empty list or dataset)")
    other = next((g for g in graphs if not isinstance(g, Data)), None)
    if other is not None:
        raise ValueError(f"{where} holds {_kind(other)} among its graphs; expected PyG Data objects")
    return graphs


def _kind(obj: Any) -> str:
    if isinstance(obj, HeteroData):
        return "a HeteroData (several node or edge types; convert it with data.to_homogeneous())"
    return f"a {type(obj).__name__}"


def _processed_graphs(out: tuple) -> Data | list[Data]:
    """The graphs of a PyG ``InMemoryDataset``'s processed file: ``(data, slices)`` or ``(dict, slices, class)``."""
    data, slices = out[0], out[1]
    if isinstance(data, dict):
        data = (out[2] if len(out) == 3 else Data).from_dict(data)
    if slices is None:  # PyG stores a one-graph dataset without slices
        return data
    dataset = InMemoryDataset()
    dataset.data, dataset.slices = data, slices
    return [dataset[i] for i in range(len(dataset))]


def load_source(cfg: GraphDataConfig) -> Data | GraphList:
    """The configured graph (node level) or usable graphs (graph level, with the count of those skipped),
    their features truncated to ``data.max_features``."""
    if cfg.source == "prepared":
        from domains.graph.builders import load_prepared

        obj: Any = load_prepared(cfg.name)
        name = f"data.name={cfg.name}"
    elif cfg.source == "pyg":
        key = "data.path" if cfg.path else "data.name"
        obj, name = load_pyg(pyg_name(cfg), cfg.kwargs, key), f"data.name={pyg_name(cfg)}"
    else:
        obj, name = load_file(Path(cfg.path), cfg.trust_pickle), f"data.path={cfg.path}"
    graphs = as_graphs(obj, name)
    if cfg.level == "node":
        if isinstance(graphs, list):
            if len(graphs) != 1:
                raise ValueError(f"data.level=node needs one graph, {name} holds {len(graphs)}; use data.level=graph")
            graphs = graphs[0]
        problem = graph_problem(graphs)
        if problem:
            raise ValueError(f"{name}: {problem}")
        return truncate_features(graphs, cfg.max_features)
    if isinstance(graphs, Data):
        raise ValueError(f"data.level=graph needs a list of graphs, {name} holds one graph; use data.level=node")
    usable = usable_graphs(graphs, name)
    return GraphList([truncate_features(g, cfg.max_features) for g in usable], skipped=usable.skipped)


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
    if edges.dtype != torch.long:
        return f"edge_index must be an integer tensor (torch.long), found {edges.dtype}: save edge_index.long()"
    if edges.dim() != 2 or edges.shape[0] != 2:
        return f"edge_index has shape {tuple(edges.shape)}, expected [2, num_edges]"
    lowest, highest = int(edges.min()), int(edges.max())
    if lowest < 0 or highest >= data.num_nodes:
        return (
            f"edge_index points to node {lowest if lowest < 0 else highest}, "
            f"but the graph has nodes 0..{data.num_nodes - 1}"
        )
    return None


class GraphList(list):
    """The usable graphs of a graph-level dataset; ``skipped`` counts those left out (each one logged)."""

    def __init__(self, graphs: Sequence[Data] = (), skipped: int = 0) -> None:
        super().__init__(graphs)
        self.skipped = skipped


def usable_graphs(graphs: Sequence[Data], name: str) -> GraphList:
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
    return GraphList(keep, skipped=len(graphs) - len(keep))


def truncate_features(data: Data, max_features: int | None) -> Data:
    """``data`` with only its first ``max_features`` feature columns (dense or sparse CSR ``x``)."""
    if max_features is None or data.x.shape[1] <= max_features:
        return data
    x = data.x
    if x.layout == torch.sparse_csr:
        coo = x.to_sparse_coo().coalesce()
        keep = coo.indices()[1] < max_features
        with csr_features():
            x = (
                torch.sparse_coo_tensor(coo.indices()[:, keep], coo.values()[keep], (x.shape[0], max_features))
                .coalesce()
                .to_sparse_csr()
            )
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
        extras = {Extra.LABELS: torch.tensor([r["label"] for r in rows])} if with_labels else {}
        return ego_batch(sample, graph.x, **extras)

    return collate


def full_collate(graph: Data) -> Callable[[list[dict]], Batch]:
    """The whole graph, whatever the rows (``data.mode=full``; one row per step), densified once."""
    batch = full_batch(graph)
    return lambda rows: batch


def graphs_collate(with_labels: bool) -> Callable[[list[dict]], Batch]:
    """Rows of graphs -> one grid row per graph (PyG's ``Batch.from_data_list``)."""

    def collate(rows: list[dict]) -> Batch:
        extras = {Extra.LABELS: torch.tensor([r["label"] for r in rows])} if with_labels else {}
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
        args = {
            "mask_features": (cfg.mask_feature_p[0],),
            "drop_edges": (cfg.drop_edge_p[0],),
            "drop_nodes": (cfg.drop_node_p,),
            "subgraph": (cfg.subgraph_hops,),
        }[name]
        return augment.AUGMENTATIONS[name](batch, *args)

    def __call__(self, batch: Batch) -> Batch:
        cfg = self.cfg
        if cfg.views == "gpt_gnn":
            return augment.generation_split(batch, cfg.gen_attr_ratio, cfg.gen_edge_ratio)
        if cfg.views == "graphcl":
            views = (self._graphcl_view(batch), self._graphcl_view(batch))
        else:
            views = tuple(
                augment.drop_edges(augment.mask_features(batch, pf), pe)
                for pf, pe in zip(cfg.mask_feature_p, cfg.drop_edge_p)
            )
        return batch.replace(views=views)
