"""Every GNN architecture behind the encoder protocol; Hub-mixin export round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch_geometric.datasets import KarateClub

from domains.graph.encoders import GraphEncoderConfig, build_graph_encoder
from domains.graph.gnn import ARCHS, GraphBackbone
from domains.graph.units import full_batch


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_arch_encodes_and_masks(arch: str) -> None:
    torch.manual_seed(0)
    batch = full_batch(KarateClub()[0])
    enc = build_graph_encoder(GraphEncoderConfig(arch=arch, hidden_size=16, heads=2 if arch == "gat" else 1), 34)
    out = enc.encode(batch)
    assert out.hidden.shape == (1, 34, 16) and torch.isfinite(out.hidden).all() and out.summary is None
    with torch.no_grad():
        enc.model.mask_token.fill_(3.0)
    mask = torch.zeros(1, 34, dtype=torch.bool)
    mask[0, :5] = True
    x, _, _ = enc.node_inputs(batch, mask)
    assert (x[:5] == 3.0).all() and torch.equal(x[5:], batch.units[0, 5:])
    assert not torch.allclose(enc.encode(batch, mask=mask).hidden, out.hidden)


@pytest.mark.parametrize("arch", ["gcn", "gin"])
def test_save_pretrained_round_trip(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GraphBackbone(arch=arch, in_channels=34, hidden_channels=16, num_layers=2, jk="cat")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["arch"] == arch and config["in_channels"] == 34 and config["jk"] == "cat"
    loaded = GraphBackbone.from_pretrained(tmp_path)
    data = KarateClub()[0]
    assert torch.equal(model.eval()(data.x, data.edge_index), loaded.eval()(data.x, data.edge_index))


def test_bad_config_names_the_key() -> None:
    with pytest.raises(ValueError, match="encoder.heads"):
        GraphEncoderConfig(arch="gat", hidden_size=10, heads=3)
