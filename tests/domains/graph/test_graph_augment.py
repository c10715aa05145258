"""Graph augmentations are pure, keep the unit grid, never drop roots, and keep edges undirected."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.datasets import KarateClub

from domains.graph import augment
from domains.graph.data import GraphDataConfig, GraphViews, ego_collate
from domains.graph.units import full_batch
from mmssl.types import Batch


@pytest.fixture(scope="module")
def ego() -> Batch:
    graph = KarateClub()[0]
    return ego_collate(graph, [4, 3], with_labels=False)([{"item": i, "label": -1} for i in range(10)])


def _edge_set(batch: Batch) -> set[tuple[int, int]]:
    return set(map(tuple, batch.extras["edge_index"].T.tolist()))


@pytest.mark.parametrize("name", sorted(augment.AUGMENTATIONS))
def test_augmentations_are_pure_and_keep_the_grid(ego: Batch, name: str) -> None:
    torch.manual_seed(0)
    units, padding, edges = ego.units.clone(), ego.padding_mask.clone(), ego.extras["edge_index"].clone()
    args = {"subgraph": (1,)}.get(name, (0.5,))
    out = augment.AUGMENTATIONS[name](ego, *args)
    assert torch.equal(ego.units, units) and torch.equal(ego.padding_mask, padding)
    assert torch.equal(ego.extras["edge_index"], edges)
    assert out.units.shape == ego.units.shape
    assert not (out.padding_mask & ego.special_mask).any()  # roots survive
    assert not (ego.padding_mask & ~out.padding_mask).any()  # padding stays padding


def test_drop_edges_removes_both_directions(ego: Batch) -> None:
    torch.manual_seed(0)
    kept = _edge_set(augment.drop_edges(ego, 0.5))
    assert kept < _edge_set(ego) and all((v, u) in kept for u, v in kept)


def test_mask_features_zeroes_whole_columns(ego: Batch) -> None:
    torch.manual_seed(0)
    out = augment.mask_features(ego, 0.5)
    changed = (out.units != ego.units).any(0).any(0)  # columns that lost a value
    assert changed.any() and (out.units[..., changed] == 0).all()


def test_generation_split_removes_the_generated_links(ego: Batch) -> None:
    torch.manual_seed(0)
    out = augment.generation_split(ego, attr_ratio=0.3, edge_ratio=0.5)
    attr, pairs = out.extras["gen_attr"], out.extras["gen_pairs"]
    assert not (attr & ~ego.maskable).any() and attr.any()
    before, after = _edge_set(ego), _edge_set(out)
    assert pairs.shape[1] > 0 and after == before - {(u, v) for u, v in pairs.T.tolist()} - {
        (v, u) for u, v in pairs.T.tolist()
    }
    assert not attr.reshape(-1)[pairs[0]].any()  # links are generated from edge generation nodes


def test_views_make_two_aligned_views() -> None:
    batch = full_batch(KarateClub()[0])
    for views in ("graphcl", "bgrl"):
        torch.manual_seed(0)
        out = GraphViews(GraphDataConfig(source="pyg", name="KarateClub", views=views))(batch)
        v1, v2 = out.views
        assert v1.units.shape == v2.units.shape == batch.units.shape
