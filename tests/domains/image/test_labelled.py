"""S4L's labelled images: a class-balanced subset of the training split fixed by the seed, its minibatch stream
(epochs, ranks, exact resume of its position), and the transform that puts labelled rows into rotation batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from domains.image.config import ImageDataConfig
from domains.image.data import ImageArrays
from domains.image.domain import image_collate, make_processor
from domains.image.labelled import LabelledRotations, LabelledStream, labelled_rows, labelled_stream
from domains.image.pretext import rotate_all
from domains.image.transform import normalise
from domains.image.units import image_batch
from mmssl.types import Extra

CLASSES, PER_CLASS_AVAILABLE = 4, 9


def arrays(seed: int = 0) -> ImageArrays:
    """36 random 8x8 images, 9 of each of 4 classes in a shuffled order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(CLASSES), PER_CLASS_AVAILABLE))
    images = rng.integers(0, 256, (len(labels), 1, 8, 8), dtype=np.uint8)
    return ImageArrays(images=torch.from_numpy(images), labels=torch.from_numpy(labels), source="test")


def data(per_class: int = 3, batch: int | None = None) -> ImageDataConfig:
    return ImageDataConfig(
        source="numpy", path="x.npz", views="rotation", labels_per_class=per_class, labelled_batch_size=batch
    )


def test_the_subset_is_balanced_deterministic_by_seed_and_rows_of_the_training_split() -> None:
    train = arrays()
    rows = labelled_rows(train, data(3), seed=7)
    labels = train.labels.numpy()[rows]
    assert np.bincount(labels).tolist() == [3] * CLASSES
    assert np.array_equal(rows, labelled_rows(train, data(3), seed=7))
    assert not np.array_equal(rows, labelled_rows(train, data(3), seed=8))
    assert set(rows) <= set(range(len(train))) and len(set(rows)) == len(rows)
    assert set(rows) <= set(labelled_rows(train, data(5), seed=7))  # nested: a larger budget keeps the smaller's rows
    stream = labelled_stream(train, data(3), batch_size=4, seed=7, rank=0, world=1)
    assert torch.equal(stream.images, train.images[torch.from_numpy(rows)])  # the pixels of those training rows


def test_the_subset_is_refused_beyond_a_class_or_without_labels() -> None:
    with pytest.raises(ValueError, match=r"data.labels_per_class=10 is more than class \d .* \(9 images\)"):
        labelled_rows(arrays(), data(10), seed=0)
    unlabelled = ImageArrays(images=arrays().images, source="unlabelled.npy")
    with pytest.raises(ValueError, match="has no labels"):
        labelled_rows(unlabelled, data(1), seed=0)


def stream(batch: int = 5, rank: int = 0, world: int = 1) -> LabelledStream:
    n = 12
    return LabelledStream(
        torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n), torch.arange(n), batch, 3, rank, world
    )


def test_each_epoch_visits_every_labelled_image_once_in_a_new_order() -> None:
    s = stream(batch=4)
    epochs = [torch.cat([s.next()[1] for _ in range(3)]) for _ in range(2)]
    assert all(sorted(e.tolist()) == list(range(12)) for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])
    assert s.state_dict() == {"epoch": 2, "cursor": 0, "size": 12}


def test_the_position_resumes_exactly_mid_epoch_and_across_epochs() -> None:
    s = stream(batch=5)
    for _ in range(3):  # 15 of 12: into the second epoch
        s.next()
    state = s.state_dict()
    expected = [s.next()[1] for _ in range(4)]
    resumed = stream(batch=5)
    resumed.load_state_dict(state)
    assert state == {"epoch": 1, "cursor": 3, "size": 12}
    assert all(torch.equal(a, resumed.next()[1]) for a in expected)
    with pytest.raises(ValueError, match="12 images, this run's 5"):
        LabelledStream(torch.zeros(5, 1, 2, 2), torch.arange(5), torch.arange(5), 2, 3).load_state_dict(state)


def test_processes_take_disjoint_slices_of_one_global_minibatch_and_keep_one_position() -> None:
    single, ranks = stream(batch=6), [stream(batch=3, rank=r, world=2) for r in range(2)]
    for _ in range(3):
        assert torch.equal(torch.cat([r.next()[1] for r in ranks]), single.next()[1])
    assert ranks[0].state_dict() == ranks[1].state_dict() == single.state_dict()


def test_the_transform_rotates_unlabelled_and_labelled_images_and_labels_the_upright_labelled_rows() -> None:
    train = arrays()
    processor = make_processor(train, patch_size=4)
    collate = image_collate(processor, with_labels=False)
    rows = [{"image": train.images[i], "label": -1, "index": i} for i in range(5)]
    s = labelled_stream(train, data(3), batch_size=2, seed=0, rank=0, world=1)
    transform = LabelledRotations(processor, LabelledStream(s.images, s.labels, s.index, 2, 0))
    out = transform(collate(rows))
    images, labels, index = s.next()  # the first labelled minibatch, as the transform drew it
    both = torch.cat([train.images[:5], images]).float() / 255
    expected = image_batch(normalise(rotate_all(both)[0], processor), 4).units
    torch.testing.assert_close(out.units, expected)
    assert out.extras[Extra.PRETEXT_LABELS].tolist() == [r for r in range(4) for _ in range(7)]
    supervised = out.extras[Extra.SUPERVISED_LABELS]
    assert (
        supervised[5:7].tolist() == labels.tolist()
        and (supervised[:5] == -100).all()
        and (supervised[7:] == -100).all()
    )
    assert out.extras[Extra.SAMPLE_INDEX].tolist() == ([0, 1, 2, 3, 4, *index.tolist()] * 4)
