"""DeepCluster-v2 (Caron et al. 2018; Caron et al. 2020, sec. 4 and appendix): every view of a sample predicts the
k-means cluster of that sample's features, clustered anew over the whole dataset at the start of every epoch.

A memory holds one L2-normalised projection per training sample and global view, written when the sample is
seen, so at an epoch's end it holds the features of the whole epoch (the v2 form: last epoch's features, no
extra pass). At the start of the next epoch -- detected when a sample of the memory's epoch comes again -- each
of ``num_heads`` spherical k-means (random samples of the memory as initial centroids, ``kmeans_iterations``
Lloyd steps, an empty cluster keeps its previous centroid as ``main_deepclusterv2.py`` does) gives every sample
of that epoch a pseudo-label and resets that head's prototypes to the centroids (frozen, as the official
``freeze_prototypes_niters`` of 1e10 keeps them). The loss is the cross entropy of every view's prototype
scores at ``temperature`` against its sample's label; a sample the last epoch left out (``drop_last``) has
none and is skipped (``ignore_index=-100``, as in the official code).

Before the first clustering there are no labels: epoch 0 trains as SwAV's first epoch does -- swapped
prediction of Sinkhorn-Knopp codes against the frozen, randomly initialised prototypes (Caron et al. 2020,
sec. 3.1; ``main_swav.py`` freezes them for that epoch) -- while it fills the memory. The official DeepCluster-v2
code runs a forward-only pass over the data instead (``init_memory``), which an objective, seeing only its
batches, cannot.

Each batch must carry its samples' positions in the training data, ``extras[Extra.SAMPLE_INDEX]`` (``[B]`` int64).
Every process gathers the indices and projections of the global batch, so the memory, the k-means and the labels
are the same on every process (the k-means initialisation is drawn from a generator seeded by the run's seed
and the clustering count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.distributed import gather_no_grad, global_mean_normalizer
from mmssl.encoder import Encoder
from mmssl.objectives.base import Objective
from mmssl.objectives.checks import check_positive
from mmssl.objectives.heads import HEAD_SHAPES, MLPHead, configured_head
from mmssl.objectives.losses import f32, full_precision
from mmssl.objectives.swav import NUM_ASSIGNED, prototype_scores, sinkhorn, swapped_prediction_loss
from mmssl.objectives.views import embedding_std, encode_crops, views_of
from mmssl.types import Batch, Extra, ObjectiveOutput

IGNORE = -100  # the label of a sample the memory has no features of (F.cross_entropy's ignore_index)
KMEANS_CHUNK = 8192  # memory rows scored against the centroids at once ([chunk, K] floats)


@torch.no_grad()
@full_precision
def nearest_centroid(x: Tensor, centroids: Tensor) -> Tensor:
    """k-means' E-step on the sphere: ``[M]`` index of each unit row of ``x`` (``[M, P]``) with the largest
    dot product with a unit centroid (``[K, P]``); the lowest index on a tie; outside autocast (a half-precision
    product could pick another centroid)."""
    return torch.cat([(part @ centroids.T).argmax(1) for part in x.split(KMEANS_CHUNK)])


@torch.no_grad()
def spherical_kmeans(x: Tensor, init: Tensor, iterations: int) -> tuple[Tensor, Tensor, Tensor]:
    """Spherical k-means, as ``cluster_memory`` of the official ``main_deepclusterv2.py``.

    Each of ``iterations`` Lloyd steps assigns every row to its nearest centroid (dot product), then moves each
    centroid to the normalised mean of its rows; a centroid no row chose keeps its previous value. A last
    E-step gives the assignments.

    Args:
        x: ``[M, P]`` unit rows (the memory's projections).
        init: ``[K, P]`` unit initial centroids (DeepCluster-v2: ``K`` random rows of ``x``).
        iterations: Lloyd steps (official: 10).

    Returns:
        ``(centroids [K, P], assignments [M] int64, counts [K] int64)``: the final centroids, each row's
        cluster and each cluster's size under the final assignment (0 for an empty cluster).
    """
    centroids = init.clone()
    k = centroids.shape[0]
    for _ in range(iterations):
        labels = nearest_centroid(x, centroids)
        members = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        kept = members > 0  # an empty cluster keeps its centroid (main_deepclusterv2.py: centroids[mask] = ...)
        centroids[kept] = F.normalize(sums[kept], dim=1)
    labels = nearest_centroid(x, centroids)
    return centroids, labels, torch.bincount(labels, minlength=k)


@full_precision
def deepcluster_loss(scores: Sequence[Tensor], labels: Tensor, temperature: float = 0.1, gather: bool = True) -> Tensor:
    """DeepCluster-v2's loss: every view's prototype scores against its sample's k-means label.

    With ``N`` the samples of the global batch that have a label (``labels != -100``)::

        loss = sum_v sum_{b labelled} -log softmax(scores_vb / tau)[labels_b] / (V * N)

    the official mean cross entropy over all crops. Each process divides its own sum by the *global* count
    (:func:`mmssl.distributed.global_mean_normalizer`), so DDP's average of the processes' losses is this mean,
    also when the processes hold different numbers of labelled samples.

    Args:
        scores: ``V`` tensors ``[B, K]``: each view's cosines to the ``K`` prototypes.
        labels: ``[B]`` int64 cluster of each sample, ``-100`` where it has none.
        temperature: ``tau`` (official: 0.1).
        gather: count the labelled samples of every process (no-op in one process).

    Returns:
        Scalar loss (0 when no sample of the global batch has a label).

    Raises:
        ValueError: On no views, scores that are not ``[B, K]`` of one shape, labels that are not ``[B]``, or
            ``temperature <= 0``.
    """
    if not scores or any(s.ndim != 2 or s.shape != scores[0].shape for s in scores):
        raise ValueError(f"scores must be 1 or more [B, K] of one shape, got {[tuple(s.shape) for s in scores]}")
    if labels.shape != scores[0].shape[:1]:
        raise ValueError(f"labels must be [{scores[0].shape[0]}], got {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    total = sum(F.cross_entropy(f32(s) / temperature, labels, ignore_index=IGNORE, reduction="sum") for s in scores)
    count = (labels != IGNORE).sum()
    normaliser = global_mean_normalizer(count) if gather else count.float().clamp(min=1.0)
    return total / (len(scores) * normaliser)


def check_prototypes_fit(num_prototypes: int, samples: int, where: str) -> None:
    """k-means needs at least ``num_prototypes`` samples to draw its initial centroids from.

    Raises:
        ValueError: Naming ``objective.num_prototypes`` and where the ``samples`` come from.
    """
    if num_prototypes > samples:
        raise ValueError(
            f"objective.num_prototypes={num_prototypes} is more than the {samples} samples of {where}, which "
            "k-means clusters: lower objective.num_prototypes or train on more data"
        )


def sample_index(batch: Batch) -> Tensor:
    """``[B]`` int64 ``extras["sample_index"]``: each sample's position in the training data, checked."""
    index = batch.extras.get(Extra.SAMPLE_INDEX)
    if index is None:
        raise ValueError(
            "deepcluster needs each sample's position in the training data in Batch.extras['sample_index'] "
            "([B] int64) to keep its features and pseudo-label across the epoch; this data pipeline gives none"
        )
    if index.shape != (batch.batch_size,) or index.dtype != torch.long or bool((index < 0).any()):
        raise ValueError(f"extras['sample_index'] must be [{batch.batch_size}] int64 >= 0, got {index}")
    return index


@dataclass(frozen=True)
class DeepClusterConfig:
    """DeepCluster-v2 (Caron et al. 2020); defaults are the official ``main_deepclusterv2.py`` ones."""

    name: str = "deepcluster"
    temperature: float = 0.1  # tau of the cross entropy
    num_prototypes: int = 3000  # K of each k-means (nmb_prototypes 3000 3000 3000)
    num_heads: int = 3  # k-means per epoch, each with its own prototypes and labels; the loss averages them
    kmeans_iterations: int = 10  # nmb_kmeans_iters
    epsilon: float = 0.05  # epoch 0 (SwAV's codes): Sinkhorn-Knopp entropy regularisation
    sinkhorn_iterations: int = 3  # epoch 0
    projector_hidden_dim: int = HEAD_SHAPES["swav_projector"].hidden_dim  # SwAV's head: hidden_mlp 2048
    projector_dim: int = HEAD_SHAPES["swav_projector"].out_dim  # feat_dim 128

    def __post_init__(self) -> None:
        check_positive(
            self,
            "temperature",
            "num_prototypes",
            "num_heads",
            "epsilon",
            "sinkhorn_iterations",
            "projector_hidden_dim",
            "projector_dim",
        )
        if self.kmeans_iterations < 0:
            raise ValueError(f"objective.kmeans_iterations must be >= 0, got {self.kmeans_iterations}")

    def check_recipe(self, recipe: Any) -> None:
        """The prototypes and a data section that caps its samples (the image domain's ``data.max_images``); the
        size of the data itself is known once it is loaded, and the first clustering checks it."""
        cap = getattr(recipe.data, "max_images", None)
        if cap is not None:
            check_prototypes_fit(self.num_prototypes, cap, f"data.max_images={cap}")


class ClusterMemory(nn.Module):
    """The features and pseudo-labels of every training sample, grown to the largest sample index seen.

    Buffers (all in the checkpoint): ``features`` ``[C, N, P]`` (the normalised projection of each of the ``C``
    global views of sample ``n``, as last seen), ``filled`` ``[N]`` (written since the last clustering: the
    samples of the current epoch) and ``labels`` ``[H, N]`` (each head's cluster of each sample, -100 for none).
    """

    features: Tensor
    filled: Tensor
    labels: Tensor

    def __init__(self, views: int, dim: int, heads: int) -> None:
        super().__init__()
        self.register_buffer("features", torch.zeros(views, 0, dim))
        self.register_buffer("filled", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("labels", torch.zeros(heads, 0, dtype=torch.long))

    def grow(self, size: int) -> None:
        """Make room for samples ``0 .. size - 1`` (new rows: no features, no label)."""
        extra = size - self.filled.shape[0]
        if extra > 0:
            self.features = F.pad(self.features, (0, 0, 0, extra))
            self.filled = F.pad(self.filled, (0, extra), value=False)
            self.labels = F.pad(self.labels, (0, extra), value=IGNORE)

    def labels_of(self, index: Tensor) -> Tensor:
        """``[H, B]`` each head's label of the samples ``index`` (``[B]``), -100 for a sample never clustered."""
        known = index < self.labels.shape[1]
        out = self.labels.new_full((self.labels.shape[0], index.shape[0]), IGNORE)
        out[:, known] = self.labels[:, index[known]]
        return out

    def seen_again(self, index: Tensor) -> bool:
        """Whether a sample of ``index`` was written since the last clustering: a new epoch has begun."""
        self.grow(int(index.max()) + 1)
        return bool(self.filled[index].any())

    @torch.no_grad()
    def write(self, index: Tensor, features: Sequence[Tensor]) -> None:
        """Store the ``C`` views' ``[B, P]`` features of the samples ``index`` (``[B]``) and mark them seen."""
        self.grow(int(index.max()) + 1)
        for view, f in enumerate(features):
            self.features[view, index] = f.to(self.features.dtype)
        self.filled[index] = True

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Take each buffer's size from the checkpoint before its values are copied in."""
        for name, buffer in self.named_buffers(recurse=False):
            stored = state_dict.get(prefix + name)
            if stored is not None and stored.shape != buffer.shape:
                setattr(self, name, buffer.new_empty(stored.shape))
        super()._load_from_state_dict(state_dict, prefix, *args)


class DeepCluster(Objective):
    """Every view predicts its sample's k-means label of the last epoch (see module docstring).

    State beyond the weights, all in the checkpoint: the :class:`ClusterMemory`, ``prototypes`` ``[H, K, P]``
    (each head's centroids of the last clustering; random unit vectors before the first), ``clusterings`` (how
    many so far), ``seed`` (drawn from the run's seed at construction; with ``clusterings`` it seeds each
    k-means initialisation) and ``clusters_used`` (the fraction of non-empty clusters of the last clustering).
    """

    prototypes: Tensor
    clusterings: Tensor
    seed: Tensor
    clusters_used: Tensor

    def __init__(self, config: DeepClusterConfig, encoder: Encoder) -> None:
        super().__init__(config, encoder)
        self.projector: MLPHead = configured_head(  # main_deepclusterv2.py builds SwAV's resnet50.py head
            "swav_projector", encoder.hidden_size, config.projector_hidden_dim, config.projector_dim
        )
        self.memory = ClusterMemory(NUM_ASSIGNED, config.projector_dim, config.num_heads)
        prototypes = F.normalize(torch.randn(config.num_heads, config.num_prototypes, config.projector_dim), dim=2)
        self.register_buffer("prototypes", prototypes)
        self.register_buffer("clusterings", torch.zeros((), dtype=torch.long))
        self.register_buffer("seed", torch.randint(0, 2**31 - 1, ()))
        self.register_buffer("clusters_used", torch.zeros(()))

    def project(self, encoder: Encoder, views: Sequence[Batch]) -> list[Tensor]:
        """``V`` float32 ``[B, P]`` normalised projections, every crop through one projector call (one batch norm
        over all crops, as the official multi-crop forward)."""
        pooled = [out.pooled() for out in encode_crops(encoder, views)]
        z = self.projector(torch.cat(pooled))  # [V B, P]
        return list(F.normalize(f32(z), dim=1).split(views[0].batch_size))

    @torch.no_grad()
    def cluster(self) -> None:
        """k-means of the epoch that just ended (the memory's filled rows), per head: new prototypes and labels.

        Raises:
            ValueError: Naming ``objective.num_prototypes`` when the epoch had fewer samples than prototypes.
        """
        cfg, memory = self.config, self.memory
        rows = memory.filled.nonzero().squeeze(1)  # [M] samples of the last epoch
        check_prototypes_fit(cfg.num_prototypes, len(rows), "the epoch that just ended (the memory)")
        generator = torch.Generator().manual_seed(int(self.seed) + int(self.clusterings))
        memory.labels.fill_(IGNORE)  # a sample the last epoch left out has no label
        used = []
        for head in range(cfg.num_heads):
            x = memory.features[head % NUM_ASSIGNED, rows]  # the heads alternate between the global views' memories
            init = x[torch.randperm(len(rows), generator=generator)[: cfg.num_prototypes].to(x.device)]
            centroids, labels, counts = spherical_kmeans(x, init, cfg.kmeans_iterations)
            self.prototypes[head] = centroids
            memory.labels[head, rows] = labels
            used.append((counts > 0).float().mean())
        self.clusters_used.copy_(torch.stack(used).mean())
        memory.filled.zero_()
        self.clusterings.add_(1)

    def warmup_loss(self, scores: Sequence[Sequence[Tensor]]) -> Tensor:
        """Epoch 0: SwAV's swapped prediction of the global views' Sinkhorn-Knopp codes, averaged over the heads."""
        cfg = self.config
        losses = []
        for s in scores:
            codes = [sinkhorn(si.detach(), cfg.epsilon, cfg.sinkhorn_iterations) for si in s[:NUM_ASSIGNED]]
            losses.append(swapped_prediction_loss(s, codes, cfg.temperature))
        return torch.stack(losses).mean()

    def forward(self, encoder: Encoder, batch: Batch) -> ObjectiveOutput:
        cfg = self.config
        views = views_of(batch, "deepcluster")
        index = sample_index(batch)  # [B]
        z = self.project(encoder, views)  # V x [B, P]
        seen = gather_no_grad(index) if self.training else index  # the samples of the global batch
        if self.training and self.memory.seen_again(seen):
            self.cluster()  # the first batch of a new epoch
        scores = [[prototype_scores(zi, p) for zi in z] for p in self.prototypes]  # H x V x [B, K], float32
        labels = self.memory.labels_of(index)  # [H, B]
        if int(self.clusterings) == 0:
            loss = self.warmup_loss(scores)
        else:
            loss = torch.stack([deepcluster_loss(s, y, cfg.temperature) for s, y in zip(scores, labels)]).mean()
        if self.training:
            self.memory.write(seen, [gather_no_grad(zi) for zi in z[:NUM_ASSIGNED]])
        logs = {
            "embedding_std": embedding_std(z[0]),
            "clusterings": self.clusterings.float(),
            "labelled": (labels[0] != IGNORE).float().mean(),  # samples of this batch with a pseudo-label
            "clusters_used": self.clusters_used.clone(),  # non-empty clusters of the last clustering
        }
        return ObjectiveOutput(loss=loss, terms={"deepcluster": loss}, logs=logs)
