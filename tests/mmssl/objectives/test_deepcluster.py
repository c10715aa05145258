"""DeepCluster-v2: spherical k-means against a written-out Lloyd loop and sklearn, empty clusters, the loss against
its formula, epoch 0, the clustering at an epoch's start, samples an epoch left out, learning, exact resume across
a clustering, two processes against one, and the settings errors."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from domains.image.units import image_batch
from mmssl.config import ConfigError, from_dict
from mmssl.objectives import objective_spec
from mmssl.objectives.base import SSLModel
from mmssl.objectives.deepcluster import (
    DeepCluster,
    DeepClusterConfig,
    deepcluster_loss,
    nearest_centroid,
    spherical_kmeans,
)
from mmssl.objectives.heads import MLPHead
from mmssl.objectives.swav import sinkhorn, swapped_prediction_loss
from mmssl.recipe import load_recipe
from mmssl.types import Batch, Extra
from tests.fitting import fit
from tests.mmssl.objectives.loss_checks import (
    assert_decreases_on_a_toy_embedding,
    assert_float32_under_bf16_autocast,
    assert_same_loss_and_grads,
    assert_steps_match,
    one_vs_two_processes,
    run_in_two_processes,
)
from tests.mmssl.objectives.view_fixtures import PATCH, SIZE, MLPEncoder, smooth_images, views_batch, vit

SMALL = {"projector_hidden_dim": 64, "projector_dim": 32, "num_prototypes": 4, "num_heads": 2}
POOL = F.interpolate(torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(3)), size=(SIZE, SIZE))


def pool_batch(index: Tensor, seed: int, num_views: int = 2, pool: Tensor = POOL) -> Batch:
    """Views of the pool's images ``index``, which the batch carries in ``extras["sample_index"]``."""
    return views_batch(pool[index], num_views=num_views, seed=seed).replace(extras={Extra.SAMPLE_INDEX: index})


def epoch_order(step: int, size: int = 16, batch: int = 8) -> Tensor:
    """The samples of 1-based ``step``: epoch ``e`` is a permutation of the pool, seeded by ``e``, in batches."""
    per_epoch = size // batch
    epoch, i = divmod(step - 1, per_epoch)
    return torch.randperm(size, generator=torch.Generator().manual_seed(epoch))[i * batch : (i + 1) * batch]


def step_batch(step: int) -> Batch:
    return pool_batch(epoch_order(step), seed=step, num_views=3)


def deepcluster(seed: int = 0, **settings: object) -> SSLModel:
    enc = vit(seed)
    torch.manual_seed(seed + 1)
    return SSLModel(enc, DeepCluster(DeepClusterConfig(**{**SMALL, **settings}), enc))


# ---------------------------------------------------------------- k-means


def lloyd_reference(x: np.ndarray, centroids: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means written out: nearest centroid by dot product, normalised means, empty clusters kept."""
    c = centroids.copy()
    for _ in range(iterations):
        labels = np.argmax(x @ c.T, axis=1)
        for k in range(len(c)):
            members = x[labels == k]
            if len(members):
                c[k] = members.mean(0) / np.linalg.norm(members.mean(0))
    return c, np.argmax(x @ c.T, axis=1)


def test_spherical_kmeans_is_the_written_out_lloyd_loop() -> None:
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(60, 8, generator=g, dtype=torch.float64), dim=1)
    init = x[torch.randperm(60, generator=g)[:5]]
    centroids, labels, counts = spherical_kmeans(x, init, 10)
    ref_centroids, ref_labels = lloyd_reference(x.numpy(), init.numpy(), 10)
    np.testing.assert_allclose(centroids.numpy(), ref_centroids, rtol=1e-10, atol=1e-12)
    assert labels.tolist() == ref_labels.tolist()
    assert counts.tolist() == np.bincount(ref_labels, minlength=5).tolist() and int(counts.sum()) == 60


def test_spherical_kmeans_finds_the_clusters_sklearn_finds() -> None:
    g = torch.Generator().manual_seed(1)
    directions = F.normalize(torch.randn(3, 16, generator=g), dim=1)
    x = F.normalize(directions.repeat_interleave(20, 0) + 0.15 * torch.randn(60, 16, generator=g), dim=1)
    _, labels, _ = spherical_kmeans(x, x[[45, 3, 27]], 10)
    ref = KMeans(n_clusters=3, n_init=10, random_state=0).fit(x.numpy()).labels_
    assert adjusted_rand_score(ref, labels.numpy()) == 1.0


def test_an_empty_cluster_keeps_its_centroid() -> None:
    """main_deepclusterv2.py: ``centroids[mask] = ...`` for the clusters with members only. A centroid no row is
    nearest to (here the opposite of the data, and a direction it barely has) is left where it was and labels no
    sample, at every Lloyd step and in the final assignment."""
    g = torch.Generator().manual_seed(2)
    e1, e2, e3 = torch.eye(3)
    x = F.normalize(torch.cat([e1 + 0.1 * torch.randn(4, 3, generator=g), e2 + 0.1 * torch.randn(4, 3, generator=g)]))
    init = torch.stack([x[0], -e1, x[4], e3])
    centroids, labels, counts = spherical_kmeans(x, init, 5)
    assert counts.tolist() == [4, 0, 4, 0] and labels.tolist() == [0] * 4 + [2] * 4
    assert torch.equal(centroids[1], -e1) and torch.equal(centroids[3], e3)
    torch.testing.assert_close(centroids[0], F.normalize(x[:4].mean(0), dim=0))
    torch.testing.assert_close(centroids[2], F.normalize(x[4:].mean(0), dim=0))


def test_kmeans_assigns_in_float32_under_bf16_autocast() -> None:
    """The E-step runs outside autocast: a bfloat16 product of near-equal dot products picks other centroids."""
    x = F.normalize(torch.randn(400, 32, generator=torch.Generator().manual_seed(3)), dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = nearest_centroid(x, x[:100])
    assert torch.equal(inside, nearest_centroid(x, x[:100]))


# ---------------------------------------------------------------- the loss


def scores(seed: int, views: int = 3, b: int = 8, k: int = 5) -> list[Tensor]:
    """``views`` float64 ``[b, k]`` cosines of unit embeddings to unit prototypes, leaves that require a gradient."""
    g = torch.Generator().manual_seed(seed)
    prototypes = F.normalize(torch.randn(k, 6, generator=g, dtype=torch.float64), dim=1)
    z = [F.normalize(torch.randn(b, 6, generator=g, dtype=torch.float64), dim=1) for _ in range(views)]
    return [(zi @ prototypes.T).requires_grad_() for zi in z]


def test_loss_is_the_cross_entropy_formula_over_the_labelled_samples() -> None:
    s = scores(0)
    labels = torch.tensor([0, 4, -100, 2, 2, -100, 1, 3])
    labelled = [b for b in range(8) if labels[b] != -100]
    terms = [-(si[b, labels[b]] / 0.1 - torch.logsumexp(si[b] / 0.1, dim=0)) for si in s for b in labelled]
    ref = torch.stack(terms).sum() / (3 * len(labelled))  # every view of every labelled sample, one mean
    assert_same_loss_and_grads(deepcluster_loss(s, labels, 0.1), ref, *s)
    none = deepcluster_loss(s, torch.full((8,), -100), 0.1)  # no label in the batch: 0, and a zero gradient
    assert float(none) == 0.0 and all(float(g.abs().sum()) == 0.0 for g in torch.autograd.grad(none, s))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: deepcluster_loss([], torch.zeros(3, dtype=torch.long)), "scores"),
        (lambda: deepcluster_loss([torch.randn(3, 4), torch.randn(3, 5)], torch.zeros(3, dtype=torch.long)), "one"),
        (lambda: deepcluster_loss([torch.randn(3, 4)], torch.zeros(2, dtype=torch.long)), "labels"),
        (lambda: deepcluster_loss([torch.randn(3, 4)], torch.zeros(3, dtype=torch.long), 0.0), "temperature"),
    ],
)
def test_invalid_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_loss_decreases_on_a_toy_embedding() -> None:
    labels = torch.arange(64) % 16

    def loss_of(z1: Tensor, z2: Tensor, predictor: torch.nn.Module, x1: Tensor, x2: Tensor) -> Tensor:
        prototypes = F.normalize(predictor.weight, dim=1)  # 16 prototypes for 64 samples with fixed labels
        return deepcluster_loss([F.normalize(z, dim=1) @ prototypes.T for z in (z1, z2)], labels)

    assert_decreases_on_a_toy_embedding(loss_of)


def test_loss_stays_float32_under_bf16_autocast() -> None:
    labels = torch.arange(16) % 32
    assert_float32_under_bf16_autocast(lambda s1, s2: deepcluster_loss([s1, s2], labels))


# ---------------------------------------------------------------- the objective over epochs


def projections_and_scores(model: SSLModel, batch: Batch) -> tuple[list[Tensor], list[list[Tensor]]]:
    """The objective's normalised projections of every view, and each head's scores of them."""
    objective = model.objective
    z = objective.project(model.encoder, batch.views)
    return z, [[zi @ p.T for zi in z] for p in objective.prototypes]


def test_epoch_zero_is_swav_on_the_random_prototypes_and_fills_the_memory() -> None:
    model = deepcluster()
    batch = step_batch(1)
    out = model(batch)
    z, s = projections_and_scores(model, batch)
    expected = torch.stack([swapped_prediction_loss(h, [sinkhorn(si) for si in h[:2]], 0.1) for h in s]).mean()
    torch.testing.assert_close(out.loss, expected)
    memory, index = model.objective.memory, batch.extras[Extra.SAMPLE_INDEX]
    for view in (0, 1):  # the global views' normalised projections, at their samples' rows
        torch.testing.assert_close(memory.features[view, index], z[view].detach())
    assert memory.filled.sum() == 8 and memory.filled[index].all() and int(model.objective.clusterings) == 0
    assert float(out.logs["labelled"]) == 0.0 and out.loss.requires_grad
    assert all(not torch.as_tensor(v).requires_grad for v in out.logs.values())


def test_a_sample_seen_again_starts_an_epoch_clustered_from_the_last_one() -> None:
    model = deepcluster()
    objective = model.objective
    for step in (1, 2):  # epoch 0: every sample once
        model(step_batch(step))
    memory = copy.deepcopy(objective.memory)
    batch = step_batch(3)  # epoch 1: its samples were seen in epoch 0
    out = model(batch)
    g = torch.Generator().manual_seed(int(objective.seed))  # the first clustering's seed
    for head in range(2):
        x = memory.features[head % 2]  # heads alternate between the two global views' memories
        centroids, labels, _ = spherical_kmeans(x, x[torch.randperm(16, generator=g)[:4]], 10)
        torch.testing.assert_close(objective.prototypes[head], centroids)
        assert torch.equal(objective.memory.labels[head], labels)
    index = batch.extras[Extra.SAMPLE_INDEX]
    _, s = projections_and_scores(model, batch)
    expected = torch.stack([deepcluster_loss(h, objective.memory.labels[i, index]) for i, h in enumerate(s)]).mean()
    torch.testing.assert_close(out.loss, expected)
    assert int(objective.clusterings) == 1 and float(out.logs["labelled"]) == 1.0
    assert objective.memory.filled.sum() == 8 and objective.memory.filled[index].all()  # the new epoch's memory


def test_samples_the_last_epoch_left_out_have_no_label() -> None:
    """An epoch that left samples 12-15 out (``drop_last``): they are not clustered and take no part in the loss."""
    model = deepcluster()
    model(pool_batch(torch.arange(8), seed=1))
    model(pool_batch(torch.arange(8, 12), seed=2))
    batch = pool_batch(torch.tensor([12, 13, 14, 15, 0, 1, 2, 3]), seed=3)
    out = model(batch)
    labels = model.objective.memory.labels
    assert (labels[:, 12:] == -100).all() and (labels[:, :12] >= 0).all()
    assert float(out.logs["labelled"]) == 0.5
    _, s = projections_and_scores(model, batch)
    keep = slice(4, 8)
    expected = torch.stack([deepcluster_loss([si[keep] for si in h], labels[i, :4]) for i, h in enumerate(s)]).mean()
    torch.testing.assert_close(out.loss, expected)


def test_eval_mode_leaves_the_memory_alone() -> None:
    model = deepcluster().eval()
    model(step_batch(1))
    assert model.objective.memory.filled.sum() == 0 and int(model.objective.clusterings) == 0


def test_loss_decreases() -> None:
    """Over 15 epochs of 32 images (2 steps each, 14 clusterings) the loss of the clustered epochs falls."""
    torch.manual_seed(0)
    enc = MLPEncoder()
    model = SSLModel(enc, DeepCluster(DeepClusterConfig(**SMALL), enc))
    pool = F.interpolate(torch.rand(32, 1, 4, 4, generator=torch.Generator().manual_seed(4)), size=(SIZE, SIZE))
    losses = fit(model, lambda step: pool_batch(epoch_order(step, 32, 16), step, pool=pool), 30, lr=2e-3)
    first, last = sum(losses[2:8]) / 6, sum(losses[-6:]) / 6  # from the first clustering on
    assert int(model.objective.clusterings) == 14 and last < 0.8 * first, (first, last)


def test_state_is_saved_and_resumes_exactly_across_a_clustering() -> None:
    def train(model: SSLModel, optimizer: torch.optim.Optimizer, steps: range) -> list[float]:
        losses = []
        for step in steps:
            loss = model(step_batch(step)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.after_optimizer_step(step, 6)
            losses.append(loss.item())
        return losses

    model = deepcluster()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train(model, optimizer, range(1, 3))  # epoch 0: the memory filled, no clustering yet
    state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    keys = {"objective.prototypes", "objective.clusterings", "objective.seed", "objective.memory.features"}
    assert keys | {"objective.memory.filled", "objective.memory.labels"} <= set(state)
    uninterrupted = train(model, optimizer, range(3, 7))  # clusterings at steps 3 and 5

    resumed = deepcluster(seed=5)  # other weights, other k-means seed, an empty memory
    resumed.load_state_dict(state)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-3)
    resumed_optimizer.load_state_dict(opt_state)
    assert train(resumed, resumed_optimizer, range(3, 7)) == uninterrupted
    assert int(resumed.objective.clusterings) == 2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))


# ---------------------------------------------------------------- two processes == one process on the global batch


def _rows_of(batch: Batch, rows: slice) -> Batch:
    """This process's share of a batch: the same rows of every view, and their sample indices."""

    def cut(view: Batch) -> Batch:
        return Batch(units=view.units[rows], padding_mask=view.padding_mask[rows], grid=view.grid)

    return cut(batch).replace(
        views=tuple(cut(v) for v in batch.views), extras={Extra.SAMPLE_INDEX: batch.extras[Extra.SAMPLE_INDEX][rows]}
    )


def _steps(model: SSLModel, steps: int, rows: slice | None) -> list[tuple[Tensor, dict, dict]]:
    """``(loss, gradients, state)`` after each step (the local ``rows`` under DDP), no optimizer step."""
    runner = model if rows is None else DistributedDataParallel(model, find_unused_parameters=True)
    results = []
    for step in range(1, steps + 1):
        model.zero_grad(set_to_none=True)
        batch = step_batch(step)
        loss = runner(batch if rows is None else _rows_of(batch, rows)).loss
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads, {k: v.clone() for k, v in model.state_dict().items()}))
    return results


def _objective_two_processes(rank: int) -> None:
    def make() -> SSLModel:
        model = deepcluster()
        torch.manual_seed(2)  # a projector without batch norm: DDP normalises each process's rows alone
        model.objective.projector = MLPHead(32, 64, 32, 2, batch_norm=False)
        return model

    ref = _steps(make(), 4, None)  # 2 epochs of 16 samples: a clustering at step 3
    ours = _steps(make(), 4, slice(rank * 4, (rank + 1) * 4))
    assert_steps_match(ref, ours)
    assert int(ours[-1][2]["objective.clusterings"]) == 1


def _loss_two_processes(rank: int) -> None:
    prototypes = F.normalize(torch.randn(4, 6, generator=torch.Generator().manual_seed(7)), dim=1)
    labels = torch.tensor([0, -100, 1, 2, -100, -100, -100, 3])  # 3 labelled rows on process 0, 1 on process 1

    def loss_fn(a: Tensor, b: Tensor, rows: slice | None) -> Tensor:
        s = [F.normalize(z, dim=1) @ prototypes.T for z in (a, b)]
        return deepcluster_loss(s, labels if rows is None else labels[rows], gather=rows is not None)

    one_vs_two_processes("deepcluster", loss_fn, rank)


def _two_processes(rank: int) -> None:
    _loss_two_processes(rank)
    _objective_two_processes(rank)


@pytest.mark.timeout(180)
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_in_two_processes(_two_processes, tmp_path)


# ---------------------------------------------------------------- settings and inputs


def test_builds_from_its_config_defaults() -> None:
    config = from_dict(DeepClusterConfig, {"name": "deepcluster"}, "objective")
    assert config == objective_spec("deepcluster").config_cls()
    assert (config.num_prototypes, config.num_heads, config.kmeans_iterations, config.temperature) == (3000, 3, 10, 0.1)
    with torch.device("meta"):  # the paper's 3 x 3000 prototypes and 2048-wide head without the memory
        objective = DeepCluster(config, vit())
    assert objective.prototypes.shape == (3, 3000, 128) and objective.projector[0].out_features == 2048
    with pytest.raises(ValueError, match="data.views"):
        deepcluster()(image_batch(smooth_images(), PATCH))


def test_a_batch_without_sample_indices_is_refused() -> None:
    model = deepcluster()
    with pytest.raises(ValueError, match=r"extras\['sample_index'\]"):
        model(views_batch(smooth_images()))
    with pytest.raises(ValueError, match=r"extras\['sample_index'\] must be \[8\] int64"):
        model(views_batch(smooth_images()).replace(extras={Extra.SAMPLE_INDEX: torch.arange(8.0)}))


@pytest.mark.parametrize(
    ("key", "value"), [("num_prototypes", 0), ("num_heads", 0), ("kmeans_iterations", -1), ("temperature", 0.0)]
)
def test_invalid_config_values_name_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        from_dict(DeepClusterConfig, {"name": "deepcluster", key: value}, "objective")
    with pytest.raises(ConfigError, match="unknown key 'objective.prototypes'"):
        from_dict(DeepClusterConfig, {"name": "deepcluster", "prototypes": 10}, "objective")


def test_more_prototypes_than_the_epoch_had_samples_is_an_error_naming_the_key() -> None:
    model = deepcluster(num_prototypes=20)
    model(step_batch(1))
    model(step_batch(2))
    with pytest.raises(ValueError, match="objective.num_prototypes=20 is more than the 16 samples of the epoch"):
        model(step_batch(3))


def test_the_recipe_check_names_the_prototypes() -> None:
    """``DeepClusterConfig.check_recipe`` runs when the recipe loads: more prototypes than a capped data set."""
    recipe = load_recipe("deepcluster")
    assert recipe.objective.num_prototypes == 100 and recipe.data.name == "fashion-mnist-small"
    message = "recipes/deepcluster.yaml: objective.num_prototypes=100 is more than the 50 samples of data.max_images"
    with pytest.raises(ConfigError, match=message):
        load_recipe("deepcluster", ["data.max_images=50"])
