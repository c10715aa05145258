"""The raw-feature baselines of graph tasks: features that involve no learning.

* ``propagated-features`` (node tasks): SGC-style mean aggregation (Wu et al. 2019), the node's
  features concatenated with their 1-hop and 2-hop neighbourhood means
  ``[X, A_hat X, A_hat^2 X]`` where ``A_hat`` is the row-normalised adjacency of the
  undirected graph with self-loops;
* ``mean-node-features`` (graph tasks): the mean of each graph's input node features;
* ``node-features`` (node tasks, a second reference): each node's own input features.

:meth:`domains.graph.domain.GraphDomain.raw_features` gives the first two, so
``mmssl evaluate RUN --protocol linear|knn --task TASK --init raw`` fits the same probe on them as on
an encoder's pooled features. Without a run, the linear probe on every baseline of a task::

    python -m domains.graph.baselines --task wordnet-graph
    python -m domains.graph.baselines --task solubility
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import add_self_loops, to_undirected

from domains.graph.data import Items
from mmssl.domain import RawFeatures


def mean_propagate(graph: Data, hops: int = 2) -> list[Tensor]:
    """``[X, A_hat X, ..., A_hat^hops X]`` for every node, each ``[N, F]`` float32 (dense).

    ``A_hat = D^-1 (A + I)`` on the undirected graph: each hop replaces a node's vector by the
    mean over itself and its neighbours.
    """
    n = graph.num_nodes
    x = graph.x.to_dense().float() if graph.x.layout != torch.strided else graph.x.float()
    edge_index, _ = add_self_loops(to_undirected(graph.edge_index, num_nodes=n), num_nodes=n)
    deg = torch.bincount(edge_index[0], minlength=n).float()
    adj = torch.sparse_coo_tensor(edge_index, 1.0 / deg[edge_index[0]], (n, n)).coalesce()
    out = [x]
    for _ in range(hops):
        out.append(torch.sparse.mm(adj, out[-1]))
    return out


def _labels(rows: Items) -> Tensor:
    return torch.tensor(rows.labels, dtype=torch.long)


def propagated_baseline(graph: Data, train: Items, test: Items, hops: int = 2) -> RawFeatures:
    """Node rows (ids into ``graph``) as ``[len(rows), (hops + 1) * F]`` propagated features
    (``hops=0``: the ``node-features`` alone)."""
    propagated = mean_propagate(graph, hops)

    def rows_of(rows: Items) -> Tensor:
        ids = torch.tensor(rows.items, dtype=torch.long)
        return torch.cat([h[ids] for h in propagated], dim=1)

    name = "propagated-features" if hops else "node-features"
    return RawFeatures(name, (rows_of(train), _labels(train)), (rows_of(test), _labels(test)))


def mean_features_baseline(train: Items, test: Items) -> RawFeatures:
    """Graph rows as ``[len(rows), F]``: the mean of each graph's node features."""

    def means(rows: Items) -> Tensor:
        return torch.stack([g.x.float().mean(0) for g in rows.items])

    return RawFeatures("mean-node-features", (means(train), _labels(train)), (means(test), _labels(test)))


def baseline_probes(task_name: str) -> list[dict[str, Any]]:
    """The linear probe (:func:`mmssl.probes.fit_linear_probe`) on the task's raw-feature baseline
    (:meth:`GraphDomain.raw_features`) and, for a node task, on the node features alone."""
    from mmssl.probes import fit_linear_probe
    from mmssl.registry import DOMAINS
    from mmssl.tasks import ProbeConfig, TaskConfig

    task, domain = TaskConfig(name=task_name), DOMAINS.get("graph")
    data = domain.task_data(task)
    graph = domain.load_task(task_name).graph  # None for a graph-level task
    baselines: list[Callable[[], RawFeatures]] = [lambda: domain.raw_features(data, task)]
    if graph is not None:
        baselines.append(lambda: propagated_baseline(graph, data.train, data.test, hops=0))
    results = []
    for baseline in baselines:
        start = time.perf_counter()
        raw = baseline()
        result = fit_linear_probe(raw.train, raw.test, ProbeConfig())
        results.append({"baseline": raw.name, **result, "seconds": round(time.perf_counter() - start, 1)})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="linear probes on raw and propagated graph features")
    parser.add_argument("--task", default="wordnet-graph")
    args = parser.parse_args()
    for result in baseline_probes(args.task):
        print(json.dumps({"task": args.task, **result}))


if __name__ == "__main__":
    main()
