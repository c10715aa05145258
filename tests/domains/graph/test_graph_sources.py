"""``data.source=pyg`` names data, never code: PyG dataset classes and registered graph sources only."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch_geometric.data import Data, InMemoryDataset

from domains.graph import data as graph_data
from domains.graph.data import GRAPH_SOURCES_GROUP, GraphDataConfig, load_pyg, load_source
from mmssl.cli import main
from mmssl.config import ConfigError
from tests.conftest import TINY_GRAPH


def _pretrain(tmp_path: Path, *overrides: str) -> int:
    sets = [arg for o in [*TINY_GRAPH[2:], "train.max_steps=1", *overrides] for arg in ("--set", o)]
    return main(["pretrain", "dgi", "--output-dir", str(tmp_path / "run"), *sets])


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("data.path=os:system", "data.path"),  # the attack of issue 17
        ("data.path=torch_geometric.datasets:os.system", "data.path"),
        ("data.path=os.system", "data.path"),
        ("data.name=os:system", "data.name"),
        ("data.name=os.system", "data.name"),
        ("data.name=system", "data.name"),
    ],
)
def test_a_recipe_cannot_name_a_callable(
    setting: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    code = _pretrain(tmp_path, "data.source=pyg", setting, f'data.kwargs={{command: "id > {marker}"}}')
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert err.startswith("mmssl: error: ") and f"{key}='" in err and "system" in err
    assert "KarateClub" in err and GRAPH_SOURCES_GROUP in err  # says how to choose


def test_a_pyg_name_that_does_not_exist_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _pretrain(tmp_path, "data.source=pyg", "data.name=KarateKlub") == 2
    assert (
        "mmssl: error: data.name='KarateKlub' is not a PyG dataset or a registered graph source"
        in capsys.readouterr().err
    )


def test_kwargs_that_do_not_fit_the_class_name_the_key() -> None:
    with pytest.raises(ConfigError, match="data.kwargs does not fit KarateClub: .*'num_graphs'"):
        load_pyg("KarateClub", {"num_graphs": 3})


def test_pyg_classes_by_name_and_by_the_older_path_spelling() -> None:
    by_name = load_source(GraphDataConfig(source="pyg", name="KarateClub"))
    by_path = load_source(GraphDataConfig(source="pyg", path="torch_geometric.datasets:KarateClub"))
    assert by_name.num_nodes == by_path.num_nodes == 34
    graphs = load_source(
        GraphDataConfig(
            source="pyg",
            name="FakeDataset",
            level="graph",
            kwargs={"num_graphs": 5, "avg_num_nodes": 6, "num_channels": 4},
        )
    )
    assert len(graphs) == 5 and all(g.x.shape[1] == 4 for g in graphs)


class _StoredSet(InMemoryDataset):
    """A dataset class that keeps files under ``root`` (as Planetoid and TUDataset do), without downloads."""

    def __init__(self, root: str, size: int = 2) -> None:
        self.size = size
        super().__init__(root)
        self.load(self.processed_paths[0])

    @property
    def processed_file_names(self) -> list[str]:
        return ["data.pt"]

    def process(self) -> None:
        graphs = [Data(x=torch.ones(3, 2), edge_index=torch.tensor([[0, 1], [1, 2]])) for _ in range(self.size)]
        self.save(graphs, self.processed_paths[0])


def test_a_class_with_a_root_keeps_its_files_in_the_mmssl_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmssl.datasets import cache_root

    monkeypatch.setattr(graph_data, "pyg_dataset_class", lambda name: _StoredSet if name == "Stored" else None)
    assert len(load_pyg("Stored", {"size": 3})) == 3
    assert (cache_root() / "pyg" / "Stored" / "processed" / "data.pt").is_file()


def test_a_registered_graph_source_is_called_with_the_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    def toy_graphs(n: int) -> list[Data]:
        return [Data(x=torch.ones(2, 3), edge_index=torch.tensor([[0], [1]])) for _ in range(n)]

    def entry_points(group: str, name: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(load=lambda: toy_graphs)] if (group, name) == (GRAPH_SOURCES_GROUP, "toy") else []

    monkeypatch.setattr(graph_data, "entry_points", entry_points)
    graphs = load_source(GraphDataConfig(source="pyg", name="toy", kwargs={"n": 4}, level="graph"))
    assert len(graphs) == 4
    with pytest.raises(ConfigError, match="data.name='other' is not a PyG dataset"):
        load_pyg("other", {})
