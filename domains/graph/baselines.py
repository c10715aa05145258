"""Reference points for graph tasks: linear probes on features that involve no learning.

* ``raw``: each node's (or, for graph-level tasks, the mean of each graph's) input features;
* ``propagated`` (node tasks): SGC-style mean aggregation (Wu et al. 2019), the node's
  features concatenated with their 1-hop and 2-hop neighbourhood means
  ``[X, A_hat X, A_hat^2 X]`` where ``A_hat`` is the row-normalised adjacency of the
  undirected graph with self-loops.

Both use the same probe as ``mmssl evaluate --protocol linear`` (standardised features,
logistic regression)::

    python -m domains.graph.baselines --task wordnet-graph
    python -m domains.graph.baselines --task solubility
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import add_self_loops, to_undirected


def _dense_rows(x: Tensor, rows: Tensor) -> Tensor:
    """``[len(rows), F]`` float32 rows of a dense or sparse (CSR/COO) feature matrix."""
    if x.layout == torch.strided:
        return x[rows].float()
    return torch.stack([x[int(r)].to_dense() for r in rows]).float() if x.layout == torch.sparse_csr \
        else x.index_select(0, rows).to_dense().float()


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


def node_baselines(task) -> dict[str, dict]:
    """Raw-feature and propagated-feature probes of a node-level :class:`GraphTask`."""
    from mmssl.finetune import ProbeConfig, fit_linear_probe

    graph = task.graph
    train_ids, test_ids = torch.tensor(task.train.items), torch.tensor(task.test.items)
    y_train, y_test = torch.tensor(task.train.labels), torch.tensor(task.test.labels)
    results = {}
    start = time.perf_counter()
    x = graph.x
    results["raw"] = fit_linear_probe((_dense_rows(x, train_ids), y_train), (_dense_rows(x, test_ids), y_test),
                                      ProbeConfig())
    results["raw"]["seconds"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    hops = torch.cat(mean_propagate(graph, hops=2), dim=1)
    results["propagated_2hop"] = fit_linear_probe((hops[train_ids], y_train), (hops[test_ids], y_test), ProbeConfig())
    results["propagated_2hop"]["seconds"] = round(time.perf_counter() - start, 1)
    return results


def graph_baselines(task) -> dict[str, dict]:
    """The probe on each graph's mean node features (a graph-level :class:`GraphTask`)."""
    from mmssl.finetune import ProbeConfig, fit_linear_probe

    def means(graphs: list[Data]) -> Tensor:
        return torch.stack([g.x.float().mean(0) for g in graphs])

    train = (means(task.train.items), torch.tensor(task.train.labels))
    test = (means(task.test.items), torch.tensor(task.test.labels))
    return {"raw_mean": fit_linear_probe(train, test, ProbeConfig())}


def main() -> None:
    parser = argparse.ArgumentParser(description="linear probes on raw and propagated graph features")
    parser.add_argument("--task", default="wordnet-graph")
    args = parser.parse_args()
    from mmssl.registry import TASKS

    task = TASKS.get(args.task)()
    results = node_baselines(task) if task.level == "node" else graph_baselines(task)
    for name, r in results.items():
        print(json.dumps({"task": args.task, "baseline": name, **r}))


if __name__ == "__main__":
    main()
