"""DGI, GraphMAE, BGRL, GPT-GNN (and GraphCL's shared NT-Xent) on graph batches: parity with independent
references (PyG's DeepGraphInfomax, the papers' formulas written out here) and losses that decrease."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Data
from torch_geometric.datasets import FakeDataset, KarateClub
from torch_geometric.nn import DeepGraphInfomax

from domains.graph.data import GraphDataConfig, GraphViews, ego_collate
from domains.graph.encoders import GraphEncoderConfig, build_graph_encoder
from domains.graph.gnn import GNNEncoder
from domains.graph.units import full_batch, graphs_batch
from mmssl.objectives import objective_spec
from mmssl.objectives.base import SSLModel
from mmssl.objectives.bgrl import BGRL, BGRLConfig
from mmssl.objectives.dgi import DGI, DGIConfig
from mmssl.objectives.gpt_gnn import link_contrastive_loss
from mmssl.objectives.graphmae import GraphMAE, GraphMAEConfig, sce_loss
from mmssl.types import Batch
from tests.fitting import fit


@pytest.fixture(scope="module")
def karate() -> Data:
    return KarateClub()[0]


def _encoder(arch: str = "gcn", in_channels: int = 34, hidden: int = 16) -> GNNEncoder:
    return build_graph_encoder(GraphEncoderConfig(arch=arch, hidden_size=hidden), in_channels)


def test_dgi_equals_pyg_deep_graph_infomax(karate: Data) -> None:
    torch.manual_seed(0)
    enc = _encoder()
    perm_seed = 123
    pyg = DeepGraphInfomax(
        16,
        encoder=enc.model,
        summary=lambda z, *args, **kwargs: torch.sigmoid(z.mean(0)),
        corruption=lambda x, edge_index: (x[torch.randperm(x.shape[0])], edge_index),
    )  # resets the encoder's weights; both sides use them from here on
    ours = DGI(DGIConfig(readout="row"), enc)
    with torch.no_grad():
        ours.weight.copy_(pyg.weight)
    params = [p for name, p in enc.model.named_parameters() if name != "mask_token"]  # DGI masks nothing
    torch.manual_seed(perm_seed)
    loss = ours(enc, full_batch(karate)).loss
    grads = torch.autograd.grad(loss, params)
    torch.manual_seed(perm_seed)
    ref = pyg.loss(*pyg(karate.x, karate.edge_index))
    ref_grads = torch.autograd.grad(ref, params)
    assert torch.allclose(loss, ref, atol=1e-5)
    assert all(torch.allclose(g, r, atol=1e-5) for g, r in zip(grads, ref_grads))


def test_dgi_batch_readout_scores_the_roots(karate: Data) -> None:
    torch.manual_seed(0)
    batch = ego_collate(karate, [3, 3], False)([{"item": i, "label": -1} for i in range(8)])
    enc = _encoder()
    out = DGI(DGIConfig(readout="batch"), enc)(enc, batch)
    assert torch.isfinite(out.loss) and 0 <= float(out.logs["discriminator_accuracy"]) <= 1


def test_sce_loss_is_the_papers_formula() -> None:
    torch.manual_seed(0)
    pred, target = torch.randn(7, 5), torch.randn(7, 5)
    for alpha in (1.0, 2.0, 3.0):
        expected = torch.stack([(1 - F.cosine_similarity(p, t, dim=0)) ** alpha for p, t in zip(pred, target)]).mean()
        assert torch.allclose(sce_loss(pred, target, alpha), expected, atol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        sce_loss(pred, target, 0.5)


def test_graphmae_remasks_before_the_decoder(karate: Data) -> None:
    torch.manual_seed(0)
    enc = _encoder()
    obj = GraphMAE(GraphMAEConfig(mask_ratio=0.5, replace_ratio=0.2), enc)
    seen = {}
    obj.decoder.register_forward_hook(lambda m, args, out: seen.update(code=args[0], recon=out))
    torch.manual_seed(1)
    out = obj(enc, full_batch(karate))
    zero_rows = seen["code"][0].abs().sum(-1) == 0
    assert int(zero_rows.sum()) == 17  # half of the 34 nodes masked, all of them re-masked
    assert torch.allclose(out.loss, sce_loss(seen["recon"][0][zero_rows], karate.x[zero_rows], 2.0))


def _views(batch: Batch) -> Batch:
    return GraphViews(GraphDataConfig(source="pyg", name="KarateClub", views="bgrl"))(batch)


def test_bgrl_loss_and_ema_match_an_independent_computation(karate: Data) -> None:
    torch.manual_seed(0)
    enc = _encoder()
    obj = BGRL(BGRLConfig(predictor_hidden_dim=32), enc).train()
    batch = _views(full_batch(karate))
    v1, v2 = batch.views
    teacher = copy.deepcopy(enc)
    h1, h2 = enc.encode(v1).hidden[0], enc.encode(v2).hidden[0]
    with torch.no_grad():
        t1, t2 = teacher.encode(v1).hidden[0], teacher.encode(v2).hidden[0]
    pred = obj.predictor
    expected = sum((2 - 2 * F.cosine_similarity(pred(a), b.detach(), dim=-1)).mean() for a, b in ((h1, t2), (h2, t1)))
    assert torch.allclose(obj(enc, batch).loss, expected, atol=1e-5)
    student = {k: v.clone() for k, v in enc.state_dict().items()}
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    obj.after_optimizer_step(enc, step=0, max_steps=10)  # momentum 0.99 at step 0
    for name, t in obj.teacher.module.named_parameters():
        assert torch.allclose(t, 0.99 * student[name] + 0.01 * (student[name] + 1.0), atol=1e-6)


def test_link_contrastive_loss_is_cross_entropy_over_batch_and_queue() -> None:
    torch.manual_seed(0)
    q, k, queue = torch.randn(4, 6), torch.randn(4, 6), torch.randn(5, 6)
    cands = torch.cat([F.normalize(k, dim=1), F.normalize(queue, dim=1)])
    expected = torch.stack(
        [-torch.log_softmax(F.normalize(q[i], dim=0) @ cands.T / 0.5, dim=0)[i] for i in range(4)]
    ).mean()
    assert torch.allclose(link_contrastive_loss(q, k, queue, 0.5), expected, atol=1e-6)
    assert link_contrastive_loss(q[:0], k[:0], queue, 0.5) == 0
    # keys 0 and 1 are the same node: neither is a negative of the other's query
    ids = torch.tensor([7, 7, 1, 2])
    rows = [
        _masked_row(q, cands, 0, 1),
        _masked_row(q, cands, 1, 0),
        _masked_row(q, cands, 2, None),
        _masked_row(q, cands, 3, None),
    ]
    assert torch.allclose(link_contrastive_loss(q, k, queue, 0.5, key_ids=ids), torch.stack(rows).mean(), atol=1e-6)


def _masked_row(q: torch.Tensor, cands: torch.Tensor, i: int, other: int | None) -> torch.Tensor:
    """Cross entropy of query ``i`` (temperature 0.5) with candidate ``other`` removed."""
    keep = [j for j in range(cands.shape[0]) if j != other]
    return -torch.log_softmax(F.normalize(q[i], dim=0) @ cands[keep].T / 0.5, dim=0)[keep.index(i)]


def _train(name: str, config: dict, views: str, batches: list[Batch], in_channels: int, steps: int = 60) -> list[float]:
    torch.manual_seed(0)
    enc = _encoder("gcn", in_channels, 32)
    spec = objective_spec(name)
    obj = spec.cls(spec.config_cls(**config), enc)
    transform = GraphViews(GraphDataConfig(source="pyg", name="KarateClub", views=views)) if views != "none" else None

    def batch(step: int) -> Batch:
        b = batches[(step - 1) % len(batches)]
        return transform(b) if transform else b

    return fit(SSLModel(enc, obj), batch, steps, lr=5e-3, optimizer=torch.optim.Adam)


@pytest.mark.parametrize(
    "name, config, views",
    [
        ("dgi", {}, "none"),
        ("graphmae", {}, "none"),
        ("bgrl", {"predictor_hidden_dim": 32}, "bgrl"),
        ("gpt_gnn", {"decoder_hidden_dim": 32, "queue_size": 16}, "gpt_gnn"),
    ],
)
def test_node_level_losses_decrease(karate: Data, name: str, config: dict, views: str) -> None:
    collate = ego_collate(karate, [4, 3], with_labels=False)
    batches = [collate([{"item": i, "label": -1} for i in range(s, s + 17)]) for s in (0, 17)]
    losses = _train(name, config, views, batches, 34)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10, losses


def test_graphcl_nt_xent_on_graph_views_decreases() -> None:
    graphs = list(FakeDataset(num_graphs=32, avg_num_nodes=10, avg_degree=3, num_channels=8, num_classes=2))
    batches = [graphs_batch(graphs[i : i + 16]) for i in (0, 16)]
    losses = _train(
        "simclr", {"temperature": 0.2, "projector_hidden_dim": 32, "projector_dim": 16}, "graphcl", batches, 8
    )
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10, losses
