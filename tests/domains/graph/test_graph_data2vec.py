"""data2vec on graphs: the GNN encoder's per-layer outputs and [MASK]-token masking, and learning on a fixed batch."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.datasets import KarateClub

from domains.graph.data import ego_collate
from domains.graph.encoders import GraphEncoderConfig, build_graph_encoder
from domains.graph.gnn import ARCHS, GNNEncoder
from mmssl.objectives.base import SSLModel
from mmssl.objectives.data2vec import Data2Vec, Data2VecConfig
from mmssl.types import Batch
from tests.fitting import first_last, fit


def _ego_batch() -> Batch:
    """Ego networks of 10 KarateClub nodes (34 one-hot features), padded to the largest, roots at unit 0."""
    graph = KarateClub()[0]
    return ego_collate(graph, [4, 3], with_labels=False)([{"item": i, "label": -1} for i in range(10)])


def _encoder(arch: str = "sage", num_layers: int = 2, jk: str | None = None) -> GNNEncoder:
    torch.manual_seed(0)
    cfg = GraphEncoderConfig(
        arch=arch,
        hidden_size=16,
        num_layers=num_layers,
        heads=2 if arch == "gat" else 1,
        jk=jk,
        norm="layer_norm" if arch == "gcn" else None,
    )
    return build_graph_encoder(cfg, 34)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("num_layers", [1, 3])
def test_all_layers_match_forward(arch: str, num_layers: int) -> None:
    """``num_layers + 1`` outputs: the input features, then each layer; the last is PyG's own ``forward``."""
    enc = _encoder(arch, num_layers).eval()
    batch = _ego_batch()
    out = enc.encode(batch, all_layers=True)
    assert len(out.layers) == num_layers + 1
    assert out.layers[0].shape == (*batch.padding_mask.shape, 34) and torch.equal(out.layers[0], batch.units)
    assert all(h.shape == (*batch.padding_mask.shape, 16) for h in out.layers[1:])
    torch.testing.assert_close(out.layers[-1], out.hidden)
    torch.testing.assert_close(enc.encode(batch).hidden, out.hidden)  # the all_layers path changes nothing
    assert batch.padding_mask.any() and all(not h[batch.padding_mask].any() for h in out.layers)
    assert torch.equal(out.summary, out.hidden[:, 0])


def test_all_layers_with_jumping_knowledge() -> None:
    """With ``jk`` the layers are the per-layer outputs PyG combines; ``hidden`` is its combination."""
    enc = _encoder("gin", 3, jk="cat").eval()
    batch = _ego_batch()
    out = enc.encode(batch, all_layers=True)
    assert len(out.layers) == 4
    torch.testing.assert_close(enc.encode(batch).hidden, out.hidden)
    keep = ~batch.padding_mask
    torch.testing.assert_close(enc.model.gnn.lin(torch.cat([h[keep] for h in out.layers[1:]], -1)), out.hidden[keep])


def test_mask_token_replaces_the_masked_nodes_features() -> None:
    enc = _encoder().eval()
    with torch.no_grad():
        enc.model.mask_token.copy_(torch.linspace(-1, 1, 34))
    batch = _ego_batch()
    mask = torch.zeros_like(batch.padding_mask)
    mask[:, 1:3] = True
    mask &= ~batch.padding_mask
    out = enc.encode(batch, mask, all_layers=True)
    inputs = out.layers[0]
    assert torch.equal(inputs[mask], enc.model.mask_token.expand(int(mask.sum()), -1))
    assert torch.equal(inputs[~mask & ~batch.padding_mask], batch.units[~mask & ~batch.padding_mask])
    plain = enc.encode(batch, all_layers=True)
    assert not torch.allclose(out.layers[1][mask], plain.layers[1][mask])
    assert not (out.hidden[batch.padding_mask]).any()


def test_data2vec_masks_non_root_nodes_and_targets_every_layer() -> None:
    enc = _encoder()
    objective = Data2Vec(Data2VecConfig(mask="random", mask_prob=0.5, top_k_layers=2), enc)
    batch = _ego_batch()
    mask, _ = objective.make_mask(enc, batch, batch.maskable)
    assert not mask[:, 0].any() and not (mask & batch.padding_mask).any() and mask.any()
    assert torch.isfinite(objective(enc, batch).loss)
    with pytest.raises(ValueError, match="top_k_layers=3 but the encoder has 2 layers"):
        Data2Vec(Data2VecConfig(mask="random", top_k_layers=3), enc)(enc, batch)


def test_data2vec_loss_decreases_on_a_fixed_graph_batch() -> None:
    enc = _encoder()
    objective = Data2Vec(
        Data2VecConfig(
            mask="random", mask_prob=0.5, top_k_layers=2, ema_decay=0.99, ema_end_decay=0.999, ema_anneal_steps=50
        ),
        enc,
    )
    # the same masked nodes every step: a fixed batch the student can fit
    losses = fit(SSLModel(enc, objective).train(), _ego_batch(), 50, lr=1e-2, seed=lambda step: 0)
    first, last = first_last(losses)
    assert last < 0.5 * first, (first, last)
