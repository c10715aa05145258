"""The frozen-feature probes (mmssl/probes.py): the weighted kNN classifier against a naive implementation,
and the online monitor's logging."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mmssl.metrics import read_metrics
from mmssl.pretrain import pretrain
from mmssl.probes import knn_predict
from mmssl.recipe import MonitorConfig
from tests.conftest import TINY


def _naive_knn(train_x, train_y, test_x, num_classes, k, t):
    preds = []
    for q in test_x:
        sims = [(float(torch.nn.functional.cosine_similarity(q, x, dim=0)), int(y)) for x, y in zip(train_x, train_y)]
        votes = [0.0] * num_classes
        for sim, y in sorted(sims, reverse=True)[:k]:
            votes[y] += math.exp(sim / t)
        preds.append(max(range(num_classes), key=votes.__getitem__))
    return torch.tensor(preds)


@pytest.mark.parametrize("k", [1, 5, 50])
def test_knn_matches_naive_weighted_votes(k: int) -> None:
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(40, 8, generator=g), torch.randn(15, 8, generator=g)
    train_y = torch.randint(0, 3, (40,), generator=g)
    ours = knn_predict(train_x, train_y, test_x, 3, k=k, temperature=0.1, chunk_size=4)
    assert torch.equal(ours, _naive_knn(train_x, train_y, test_x, 3, min(k, 40), 0.1))


def test_knn_separates_clusters_and_validates() -> None:
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(4, 16, generator=g) * 5
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 16, generator=g)
    pred = knn_predict(x[:300], y[:300], x[300:], 4, k=20)
    assert (pred == y[300:]).float().mean() > 0.95
    with pytest.raises(ValueError, match="k >= 1"):
        knn_predict(x, y, x, 4, k=0)


def test_monitor_config_needs_a_task() -> None:
    with pytest.raises(ValueError, match="monitor.task is required"):
        MonitorConfig(every=10)


def test_online_knn_monitor_logs_during_pretraining(tmp_path: Path) -> None:
    run = pretrain(
        "bert",
        [
            *TINY,
            "train.max_steps=4",
            "monitor.task=rotten-tomatoes",
            "monitor.every=2",
            "monitor.max_train=64",
            "monitor.max_test=32",
            "monitor.k=5",
        ],
        tmp_path / "run",
    )
    steps = [r["step"] for r in read_metrics(run) if "knn_accuracy" in r]
    assert steps == [2, 4]
    assert all(0.0 <= r["knn_accuracy"] <= 1.0 for r in read_metrics(run) if "knn_accuracy" in r)


def test_feature_pooling_summary_mean_or_statistics_of_units() -> None:
    """``auto`` reads a ViT's [CLS] summary; ``mean`` averages the patch units (MAE's probe);
    ``mean_std`` concatenates their mean and standard deviation."""
    from domains.image.encoders import ImageEncoderConfig, build_image_encoder
    from domains.image.units import image_batch
    from mmssl.probes import extract_features

    torch.manual_seed(0)
    vit = build_image_encoder(
        ImageEncoderConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, patch_size=4),
        (8, 8),
        channels=1,
    )
    images = torch.rand(5, 1, 8, 8)
    rows = list(range(5))

    def collate(idx):
        return image_batch(images[idx], 4, labels=torch.tensor(idx))

    cls, labels = extract_features(vit, rows, collate, batch_size=2)
    mean, _ = extract_features(vit, rows, collate, batch_size=2, pooling="mean")
    stats, _ = extract_features(vit, rows, collate, batch_size=2, pooling="mean_std")
    with torch.no_grad():
        out = vit.eval().encode(collate(rows))
    torch.testing.assert_close(cls, out.summary)
    torch.testing.assert_close(mean, out.hidden.mean(1))
    torch.testing.assert_close(stats, torch.cat([out.hidden.mean(1), out.hidden.std(1, unbiased=False)], -1))
    assert labels.tolist() == rows and not torch.allclose(cls, mean)


def test_statistics_pooling_ignores_padding() -> None:
    """Each sample's mean and std come from its own real units only: padding changes nothing."""
    from mmssl.types import EncoderOutput

    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 4)
    lengths = [6, 3, 1]
    pad = torch.arange(6)[None, :] >= torch.tensor(lengths)[:, None]
    out = EncoderOutput(hidden=hidden.masked_fill(pad.unsqueeze(-1), 1e3), padding_mask=pad)
    expected = torch.stack(
        [torch.cat([hidden[i, :n].mean(0), hidden[i, :n].std(0, unbiased=False)]) for i, n in enumerate(lengths)]
    )
    torch.testing.assert_close(out.pooled_statistics(), expected)
    assert out.pooled_statistics()[2, 4:].abs().max() == 0.0  # one unit: no spread
