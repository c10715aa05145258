"""``data.source=file``: a user's ``.pt`` is unpickled with only PyG's own classes, and a bad file is a sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data, InMemoryDataset

from domains.graph.data import GraphDataConfig, load_file, load_source
from mmssl.cli import main
from tests.conftest import TINY_GRAPH


class _WritesAFile:
    """What a malicious pickle does: unpickling it calls ``open(marker, "w")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def _graph(n: int = 4, f: int = 3) -> Data:
    return Data(x=torch.randn(n, f), edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]), num_nodes=n)


def _pretrain(tmp_path: Path, path: Path, *overrides: str) -> int:
    sets = [
        arg
        for o in [*TINY_GRAPH[2:], "train.max_steps=1", "data.source=file", f"data.path={path}", *overrides]
        for arg in ("--set", o)
    ]
    return main(["pretrain", "dgi", "--output-dir", str(tmp_path / "run"), *sets])


def test_a_malicious_pickle_does_not_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "graph.pt"
    torch.save([_graph(), _WritesAFile(marker)], path)
    assert _pretrain(tmp_path, path) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert f"mmssl: error: data.path={path} needs more than PyG's own classes to load (io.open)" in err
    assert "set data.trust_pickle=true" in err
    load_file(path, trust_pickle=True)  # the documented opt-in does run the file's code
    assert marker.exists()


def test_data_and_lists_of_data_load(tmp_path: Path) -> None:
    torch.save(_graph(), tmp_path / "one.pt")
    torch.save([_graph(), _graph(5)], tmp_path / "list.pt")
    allowed = set(torch.serialization.get_safe_globals())  # PyG allows Data and HeteroData process-wide
    one = load_source(GraphDataConfig(source="file", path=str(tmp_path / "one.pt")))
    assert isinstance(one, Data) and one.num_nodes == 4
    graphs = load_source(GraphDataConfig(source="file", path=str(tmp_path / "list.pt"), level="graph"))
    assert [g.num_nodes for g in graphs] == [4, 5]
    assert set(torch.serialization.get_safe_globals()) == allowed  # the allowances were only for the load


def test_pyg_processed_files_load(tmp_path: Path) -> None:
    graphs = [_graph(), _graph(6), _graph(5)]
    InMemoryDataset.save(graphs, str(tmp_path / "many.pt"))  # what PyG datasets write as processed/data.pt
    InMemoryDataset.save(graphs[:1], str(tmp_path / "one.pt"))  # a one-graph dataset has no slices
    loaded = load_source(GraphDataConfig(source="file", path=str(tmp_path / "many.pt"), level="graph"))
    assert [g.num_nodes for g in loaded] == [4, 6, 5] and torch.equal(loaded[1].x, graphs[1].x)
    data, slices = InMemoryDataset.collate(graphs)
    torch.save((data, slices), tmp_path / "older.pt")  # PyG < 2.4 stored the Data itself
    assert len(load_source(GraphDataConfig(source="file", path=str(tmp_path / "older.pt"), level="graph"))) == 3
    assert load_source(GraphDataConfig(source="file", path=str(tmp_path / "one.pt"))).num_nodes == 4


def _write(kind: str, path: Path) -> None:
    if kind == "not a pickle":
        path.write_text("node,neighbour\n0,1\n")
    elif kind == "empty file":
        path.write_bytes(b"")
    elif kind == "a dict":
        torch.save({"x": torch.ones(2, 2)}, path)
    elif kind == "float edges":
        torch.save(Data(x=torch.ones(3, 2), edge_index=torch.tensor([[0.0, 1.0], [1.0, 2.0]])), path)
    elif kind == "empty list":
        torch.save([], path)
    elif kind == "a folder":
        path.mkdir()


@pytest.mark.parametrize(
    ("kind", "level", "message"),
    [
        ("not a pickle", "node", "is not a file written by torch.save, or it is damaged"),
        ("empty file", "node", "is not a file written by torch.save, or it is damaged"),
        ("a dict", "node", "holds a dict; expected a PyG Data, a list of Data or a PyG dataset"),
        ("float edges", "node", "edge_index must be an integer tensor (torch.long), found torch.float32"),
        ("empty list", "node", "holds no graphs"),
        ("empty list", "graph", "holds no graphs"),
        ("missing", "node", "no such file"),
        ("a folder", "node", "is a folder; expected a .pt file"),
    ],
)
def test_bad_files_are_one_sentence(
    kind: str, level: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "graph.pt"
    _write(kind, path)
    assert _pretrain(tmp_path, path, f"data.level={level}") == 2
    err = capsys.readouterr().err
    assert err.startswith("mmssl: error: ") and f"data.path={path}" in err and message in err
    assert "data.level=graph" not in err  # an empty list is not a level mistake
