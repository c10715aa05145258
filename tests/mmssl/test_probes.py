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


def test_grid_pooling_averages_regions_of_the_unit_grid() -> None:
    """``grid`` pools a [B, rows*cols, D] row-major unit grid to cells x cells region means, concatenated
    channel-major (each channel's cells together): written out for a 4x4 grid and 2x2 cells, and a 3x3 grid
    whose adaptive bins overlap (the middle row and column belong to both halves)."""
    from mmssl.types import EncoderOutput

    torch.manual_seed(0)
    fmap = torch.randn(2, 3, 4, 4)  # [B, D, rows, cols]
    out = EncoderOutput(
        hidden=fmap.flatten(2).transpose(1, 2), padding_mask=torch.zeros(2, 16, dtype=torch.bool), grid=(4, 4)
    )
    quads = [fmap[:, :, r : r + 2, c : c + 2].mean((2, 3)) for r in (0, 2) for c in (0, 2)]
    torch.testing.assert_close(out.pooled_grid(2), torch.stack(quads, -1).flatten(1))
    torch.testing.assert_close(out.pooled_grid(1), out.pooled())
    odd = torch.randn(1, 2, 3, 3)
    out3 = EncoderOutput(
        hidden=odd.flatten(2).transpose(1, 2), padding_mask=torch.zeros(1, 9, dtype=torch.bool), grid=(3, 3)
    )
    top_left = odd[:, :, :2, :2].mean((2, 3))
    torch.testing.assert_close(out3.pooled_grid(2).view(1, 2, 4)[..., 0], top_left)


def test_grid_pooling_needs_a_grid_and_a_valid_cell_count() -> None:
    from mmssl.tasks import ProbeConfig
    from mmssl.types import EncoderOutput

    seq = EncoderOutput(hidden=torch.randn(2, 5, 3), padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="2-D grid"):
        seq.pooled_grid(2)
    with pytest.raises(ValueError, match="probe.grid_cells"):
        ProbeConfig(pooling="grid", grid_cells=0)


def test_grid_pooling_of_image_encoders_through_extract_features() -> None:
    """ViT and ResNet encoders report their output grid, and ``extract_features(pooling="grid")`` pools it."""
    from domains.image.encoders import ImageEncoderConfig, build_image_encoder
    from domains.image.units import image_batch
    from mmssl.probes import extract_features

    torch.manual_seed(0)
    images = torch.rand(3, 1, 16, 16)
    for cfg, grid in (
        (ImageEncoderConfig(hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16, patch_size=4), (4, 4)),
        (ImageEncoderConfig(arch="resnet", resnet_width=4, patch_size=4), (2, 2)),
    ):
        enc = build_image_encoder(cfg, (16, 16), channels=1)

        def collate(idx, enc=enc):
            return image_batch(images[idx], 4, labels=torch.tensor(idx))

        feats, _ = extract_features(enc, [0, 1, 2], collate, batch_size=2, pooling="grid", grid_cells=2)
        with torch.no_grad():
            out = enc.eval().encode(collate([0, 1, 2]))
        assert out.grid == grid
        torch.testing.assert_close(feats, out.pooled_grid(2))
        assert feats.shape == (3, 4 * out.hidden.shape[-1])


# ---------------------------------------------------------------------------- label budgets
@pytest.fixture(scope="module")
def _bars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Noisy 28x28 images of a horizontal (label 0) or vertical (label 1) bar: 24 to train on, 12 to test."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def split(n: int) -> datasets.Dataset:
        images = []
        for i in range(n):
            pixels = rng.integers(0, 60, (28, 28), dtype=np.uint8)
            at = rng.integers(4, 22)
            if i % 2 == 0:
                pixels[at : at + 3, 3:25] = 230
            else:
                pixels[3:25, at : at + 3] = 230
            images.append(Image.fromarray(pixels))
        features = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["horizontal", "vertical"])}
        )
        return datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)]}, features=features)

    path = tmp_path_factory.mktemp("bars") / "bars"
    datasets.DatasetDict({"train": split(24), "test": split(12)}).save_to_disk(str(path))
    return path


@pytest.fixture(params=["text", "image", "graph"])
def labelled_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """``(run, --task arguments, number of classes, raw-feature baseline, labels per class)`` of a tiny run of each
    domain (karate-club's 16 training nodes hold a single node of one of its 4 communities)."""
    from tests.conftest import TINY_GRAPH, TINY_IMAGE

    if request.param == "text":
        path = tmp_path_factory.mktemp("reviews") / "reviews.csv"
        rows = [
            f"a {'lovely charming' if i % 2 else 'dull tedious'} film {i},{'pos' if i % 2 else 'neg'}"
            for i in range(60)
        ]
        path.write_text("text,label\n" + "\n".join(rows) + "\n")
        task = ["--task", "file", "--set", f"task.path={path}"]
        return request.getfixturevalue("tiny_bert_run"), task, 2, "tf-idf", 2
    if request.param == "image":
        images = request.getfixturevalue("tiny_images")
        run = pretrain(
            "mae", [*TINY_IMAGE, f"data.path={images}", "train.max_steps=2"], tmp_path_factory.mktemp("mae") / "run"
        )
        return run, ["--task", "hub", "--set", f"task.path={request.getfixturevalue('_bars')}"], 2, "pixels", 2
    run = pretrain("dgi", [*TINY_GRAPH, "train.max_steps=2"], tmp_path_factory.mktemp("dgi") / "run")
    return run, ["--task", "karate-club"], 4, "propagated-features", 1


def test_label_budget_over_seeds_against_both_baselines_in_every_domain(labelled_run: tuple, capsys) -> None:
    """``evaluate --protocol linear --set task.labels_per_class=2 --seeds 2 --baseline`` (1 per class on karate-club):
    per seed, every init is fitted on the same rows of each class (another subset at the other seed) and scored
    on the whole test split; the table and the logged summary agree with the per-seed records."""
    import json

    from mmssl.cli import main

    run, task, classes, raw, n = labelled_run
    args = ["evaluate", str(run), "--protocol", "linear", *task, "--set", f"task.labels_per_class={n}", "--seeds", "2"]
    assert main([*args, "--baseline"]) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["init"], r["seed"]) for r in records] == [
        (init, seed) for init in ("pretrained", "random", "raw") for seed in (0, 1)
    ]
    assert all(r["labels_per_class"] == n and r["n_train"] == n * classes for r in records)
    assert len({r["n_test"] for r in records}) == 1 and records[0]["train_split_rows"] > n * classes
    subsets = {(r["seed"], r["train_subset"]) for r in records}
    assert len(subsets) == 2 and {seed for seed, _ in subsets} == {0, 1}  # one subset per seed, shared by the inits
    n_test = records[0]["n_test"]
    per_class = f"{n} label{'s' if n > 1 else ''} per class"
    title = f"test accuracy of the linear probe, {per_class} ({n * classes} training rows), seeds 0-1 "
    assert f"{title}({n_test} held-out examples each)" in out
    table = out[out.index(title) :].splitlines()
    for line, init in zip(table[2:5], ("pretrained init", "random init", f"raw {raw}")):
        accs = [r["accuracy"] for r in records if line.startswith(f"  {init} ") and r["init"] == init.split()[0]]
        assert len(accs) == 2 and line.split()[len(init.split())] == f"{sum(accs) / 2:.4f}", line
    summary = [r for r in read_metrics(run) if r.get("event") == "evaluate_summary"][-1]
    assert summary["seeds"] == [0, 1] and summary["labels_per_class"] == n and summary["n_test"] == n_test
    assert list(summary["inits"]) == ["pretrained", "random", "raw"]
    vs = summary["inits"]["raw"]["vs_reference"]
    assert len(vs["mcnemar_p"]) == 2 and "ttest_rel" in vs["over_seeds"]["test"]
    assert summary["inits"]["raw"]["name"] == f"raw {raw}"
    logged = [r for r in read_metrics(run) if r.get("event") == "evaluate"][-6:]
    assert [(r["init"], r["seed"]) for r in logged] == [(r["init"], r["seed"]) for r in records]
