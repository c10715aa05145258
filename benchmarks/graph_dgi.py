"""DGI on the WordNet noun graph: mmssl's ``dgi`` recipe side by side with PyG's own ``DeepGraphInfomax``.

The PyG side is ``examples/infomax_transductive.py`` of PyTorch Geometric: a one-layer
``GCNConv`` of width 512 with PReLU, a sigmoid-of-mean summary, row-shuffling corruption,
Adam at lr 0.001, full-batch epochs. The mmssl side is ``mmssl pretrain dgi`` with the same
encoder size on the same graph, in full-batch mode (``data.mode=full``, a one-layer GCN of
width 512; PyG's basic GCN has no activation after its last layer) -- the same algorithm
through mmssl's trainer (Accelerate loop, checkpointing, export). Both read the same
82,115 x 2,000 bag-of-words features, densified.

Each side runs in its own subprocess (so that peak memory is its own); the sides are
interleaved, ``--repeats`` times, and every figure is the median. Throughput is nodes per
second of training (nodes x full-batch steps / time, first step excluded). A last, longer
run of each side (``--probe-epochs``) is probed: logistic regression on the frozen node
embeddings, on the seeded 5,000 / 20,000 split of the ``wordnet-graph`` task (the same
split and probe for both). The mini-batch path (the ``dgi`` recipe as shipped: GraphSAGE,
ego networks of [10, 5] neighbours) reports its peak memory and throughput on the full graph.
The last line is one JSON object with every figure and ``ratio`` (mmssl / PyG nodes/s). The
rounds, medians and JSON lines are ``benchmarks/harness.py``'s, shared by every side-by-side script.

    flock /tmp/mmssl-cpu.lock python benchmarks/graph_dgi.py --repeats 3 --epochs 3 --probe-epochs 40
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import harness  # benchmarks/harness.py: this script's folder comes first on sys.path

HIDDEN = 512
TINY = "--tiny" in sys.argv  # smoke check on KarateClub (seconds), not a measurement
TINY_DATA = ["data.source=pyg", "data.name=KarateClub", "data.num_neighbors=[3, 2]"]


def _graph():
    import torch

    from domains.graph.builders import load_prepared

    if TINY:
        from torch_geometric.datasets import KarateClub

        return KarateClub()[0], torch
    graph = load_prepared("wordnet-graph")
    graph.x = graph.x.to_dense()
    return graph, torch


def _probe(z, graph) -> float:
    from domains.graph.domain import node_split
    from mmssl.probes import fit_linear_probe
    from mmssl.tasks import ProbeConfig

    train, test = node_split(graph.y, *((16, 18) if TINY else (5000, 20000)))  # the wordnet-graph task's split
    return fit_linear_probe((z[train], graph.y[train]), (z[test], graph.y[test]), ProbeConfig())["accuracy"]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def side_pyg(epochs: int, probe: bool) -> dict:
    """PyG's examples/infomax_transductive.py on the WordNet graph."""
    graph, torch = _graph()
    from torch_geometric.nn import DeepGraphInfomax, GCNConv

    class Encoder(torch.nn.Module):
        def __init__(self, in_channels: int, hidden_channels: int) -> None:
            super().__init__()
            self.conv = GCNConv(in_channels, hidden_channels)
            self.prelu = torch.nn.PReLU(hidden_channels)

        def forward(self, x, edge_index):
            return self.prelu(self.conv(x, edge_index))

    torch.manual_seed(0)
    model = DeepGraphInfomax(
        HIDDEN,
        encoder=Encoder(graph.x.shape[1], HIDDEN),
        summary=lambda z, *args, **kwargs: z.mean(dim=0).sigmoid(),
        corruption=lambda x, edge_index: (x[torch.randperm(x.size(0))], edge_index),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    times = []
    for _ in range(epochs + 1):
        t0 = time.perf_counter()
        model.train()
        optimizer.zero_grad()
        loss = model.loss(*model(graph.x, graph.edge_index))
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    out = {"nodes_per_s": graph.num_nodes / statistics.median(times[1:]), "loss": float(loss), "peak_mb": _peak_mb()}
    if probe:
        model.eval()
        with torch.no_grad():
            out["probe_accuracy"] = _probe(model.encoder(graph.x, graph.edge_index), graph)
    return out


def side_mmssl(epochs: int, probe: bool) -> dict:
    """``mmssl pretrain dgi`` in full-batch mode with PyG's encoder size."""
    from mmssl.metrics import read_metrics
    from mmssl.pretrain import pretrain

    overrides = [
        "data.mode=full",
        "train.batch_size=1",
        "encoder.arch=gcn",
        "encoder.num_layers=1",
        f"encoder.hidden_size={HIDDEN}",
        f"train.max_steps={epochs + 1}",
        "train.warmup_steps=0",
        "train.lr=0.001",
        "train.weight_decay=0.0",
        "train.log_every=1",
        "train.checkpoint_every=100000",
        "train.max_minutes=null",
        *(TINY_DATA if TINY else []),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        run = pretrain("dgi", overrides, Path(tmp) / "dgi")
        records = [r for r in read_metrics(run) if "nodes_per_s" in r]
        out = {
            "nodes_per_s": statistics.median(r["nodes_per_s"] for r in records[1:]),
            "loss": records[-1]["loss"],
            "peak_mb": _peak_mb(),
        }
        if probe:
            import torch

            from domains.graph.gnn import GraphBackbone

            graph, _ = _graph()
            gnn = GraphBackbone.from_pretrained(run / "export").eval()
            with torch.no_grad():
                out["probe_accuracy"] = _probe(gnn(graph.x, graph.edge_index), graph)
    return out


def side_minibatch(steps: int, probe: bool) -> dict:
    """The ``dgi`` recipe as shipped (ego-network mini-batches) on the full graph: memory and throughput."""
    from mmssl.metrics import read_metrics
    from mmssl.pretrain import pretrain

    overrides = [
        f"train.max_steps={steps}",
        "train.log_every=1",
        "train.checkpoint_every=100000",
        "train.max_minutes=null",
        *([*TINY_DATA, "train.batch_size=8"] if TINY else []),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        records = [r for r in read_metrics(pretrain("dgi", overrides, Path(tmp) / "dgi")) if "nodes_per_s" in r]
    return {
        "seeds_per_s": statistics.median(r["samples_per_s"] for r in records[1:]),
        "nodes_per_s": statistics.median(r["nodes_per_s"] for r in records[1:]),
        "peak_mb": _peak_mb(),
    }


SIDES = {"pyg": side_pyg, "mmssl": side_mmssl, "minibatch": side_minibatch}


def run_side(side: str, epochs: int, probe: bool) -> dict:
    cmd = (
        [sys.executable, __file__, "--side", side, "--epochs", str(epochs)]
        + (["--probe"] if probe else [])
        + (["--tiny"] if TINY else [])
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{side} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {side:<10} {json.dumps(result)}", flush=True)
    return result


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="timed full-batch steps per throughput run")
    p.add_argument("--probe-epochs", type=int, default=40, help="training steps of the probed run of each side")
    p.add_argument("--minibatch-steps", type=int, default=30)
    p.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help="smoke check on KarateClub (seconds), not a measurement")
    return p.parse_args()


def throughput_rounds(repeats: int, epochs: int) -> dict[str, list[dict]]:
    """``repeats`` rounds of a throughput run of each side, alternating which goes first."""

    def throughput(side: str) -> Callable[[int], dict]:
        return lambda _round: run_side(side, epochs, probe=False)

    return harness.interleave(
        {side: throughput(side) for side in ("pyg", "mmssl")},
        repeats,
        alternate=True,
        before_round=lambda r: print(f"repeat {r + 1}/{repeats}", flush=True),
    )


def main() -> None:
    args = parse_args()
    if args.side:  # a subprocess: one side, one JSON line
        harness.print_record(SIDES[args.side](args.epochs, args.probe))
        return
    runs = throughput_rounds(args.repeats, args.epochs)
    print("probe runs", flush=True)
    probes = {side: run_side(side, args.probe_epochs, probe=True) for side in ("pyg", "mmssl")}
    print("mini-batch path", flush=True)
    mini = run_side("minibatch", args.minibatch_steps, probe=False)
    speed = harness.medians(runs, lambda r: r["nodes_per_s"])
    peak = harness.medians(runs, lambda r: r["peak_mb"])
    harness.print_record(
        {
            "graph": "karate-club" if TINY else "wordnet-graph",
            "nodes": 34 if TINY else 82115,
            "encoder": f"GCN 1 layer x {HIDDEN}",
            "repeats": args.repeats,
            "pyg_nodes_per_s": round(speed["pyg"]),
            "mmssl_nodes_per_s": round(speed["mmssl"]),
            "pyg_peak_mb": round(peak["pyg"]),
            "mmssl_peak_mb": round(peak["mmssl"]),
            "probe_epochs": args.probe_epochs,
            "pyg_probe_accuracy": round(probes["pyg"]["probe_accuracy"], 4),
            "mmssl_probe_accuracy": round(probes["mmssl"]["probe_accuracy"], 4),
            "minibatch_peak_mb": round(mini["peak_mb"]),
            "minibatch_seeds_per_s": round(mini["seeds_per_s"]),
            "minibatch_nodes_per_s": round(mini["nodes_per_s"]),
            "ratio": round(harness.ratio(speed, "mmssl", "pyg"), 3),
        }
    )


if __name__ == "__main__":
    main()
