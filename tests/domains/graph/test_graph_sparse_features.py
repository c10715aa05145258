"""Sparse CSR node features (the prepared WordNet graph) load and collate without torch's sparse warnings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from domains.graph.units import csr_features

# torch warns once per process, at the first CSR tensor, so only a fresh interpreter shows the warnings.
# It builds a tiny prepared "wordnet-graph" (CSR bag-of-words features) and runs a WordNet run's data path.
FRESH_PROCESS = """
import json, warnings
from pathlib import Path
import torch
from domains.graph.builders import TENSORS, META, save_graphs
from domains.graph.data import GraphDataConfig, ego_collate, full_collate, graphs_collate, load_source
from mmssl.datasets import COMPLETE_MARKER, dataset_dir

folder = dataset_dir("wordnet-graph")
save_graphs(folder, {"x_indptr": torch.tensor([0, 2, 3, 5, 6]), "x_indices": torch.tensor([0, 3, 1, 0, 2, 3]),
                     "edge_index": torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]]), "y": torch.tensor([0, 1, 0, 1])},
            {"level": "node", "num_nodes": 4, "num_features": 4})
(folder / COMPLETE_MARKER).write_text("ok")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    graph = load_source(GraphDataConfig(max_features=3))
    rows = [{"item": i, "label": -1} for i in range(4)]
    ego = ego_collate(graph, [2, 2], with_labels=False)(rows)
    full = full_collate(graph)(rows)
    graphs = graphs_collate(with_labels=False)([{"item": graph, "label": -1}] * 2)
assert graph.x.layout == torch.sparse_csr and ego.units.shape[-1] == full.units.shape[-1] == 3
print("WARNINGS:", [str(w.message)[:80] for w in caught])
"""


def test_a_wordnet_data_path_emits_no_sparse_warning(tmp_path: Path) -> None:
    env = {**os.environ, "MMSSL_CACHE": str(tmp_path), "PYTHONWARNINGS": "default"}
    out = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS],
        cwd=Path(__file__).parents[3],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "WARNINGS: []" in out.stdout, out.stdout
    assert "Sparse" not in out.stderr and "SEGFAULT" not in out.stderr


def test_malformed_csr_indices_are_an_error_not_a_memory_fault() -> None:
    with pytest.raises(RuntimeError, match="col_indices"), csr_features():
        torch.sparse_csr_tensor(torch.tensor([0, 1, 2]), torch.tensor([0, 9]), torch.ones(2), (2, 3))
