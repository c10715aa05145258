"""The text domain's raw-feature baseline: TF-IDF vectors fitted on the training texts, behind
:meth:`TextDomain.raw_features` and ``mmssl evaluate --init raw``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from domains.text.baselines import tfidf_features
from mmssl.cli import main
from mmssl.probes import fit_linear_probe
from mmssl.registry import DOMAINS
from mmssl.tasks import ProbeConfig, TaskConfig
from mmssl.types import Extra


def test_tfidf_is_fitted_on_the_training_texts_alone() -> None:
    train = ["a lovely lovely film", "a dull film", "lovely acting"]
    test = ["a lovely unseen word", "unseen unseen"]
    x_train, x_test = tfidf_features(train, test)
    reference = TfidfVectorizer().fit(train)  # scikit-learn's own, with its defaults
    assert x_train.shape == (3, 4) and x_test.shape == (2, 4)  # acting, dull, film, lovely
    assert x_train.dtype == torch.float32
    torch.testing.assert_close(x_test, torch.tensor(reference.transform(test).toarray(), dtype=torch.float32))
    assert float(x_test[1].abs().sum()) == 0.0  # a text of words never seen in training has no features
    torch.testing.assert_close(x_train.norm(dim=1), torch.ones(3))
    assert tfidf_features(train, test, max_words=2)[0].shape == (3, 2)  # the two most frequent words
    with pytest.raises(ValueError, match="the training texts hold no word of two or more letters or digits"):
        tfidf_features(["a", "b"], ["c"])


def _reviews(path: Path) -> Path:
    rows = [
        f"a {'lovely charming' if i % 2 else 'dull tedious'} film {i},{'pos' if i % 2 else 'neg'}" for i in range(60)
    ]
    path.write_text("review,sentiment\n" + "\n".join(rows) + "\n")
    return path


def test_raw_features_follow_the_task_rows_and_labels(
    tiny_bert_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    settings = {"path": str(_reviews(tmp_path / "reviews.csv")), "input_column": "review", "label_column": "sentiment"}
    task, domain = TaskConfig(name="file", **settings), DOMAINS.get("text")
    data = domain.task_data(task)
    raw = domain.raw_features(data, task)
    assert raw.name == "tf-idf" and raw.train[0].shape[0] == 48 and raw.test[0].shape[0] == 12
    collate = domain.task_collate(domain.load_processor(tiny_bert_run), task)
    for rows, (_, labels) in ((data.train, raw.train), (data.test, raw.test)):
        assert torch.equal(labels, collate([rows[i] for i in range(len(rows))]).extras[Extra.LABELS])
    # through the command line: the same probe on the same split
    sets = [a for key, value in settings.items() for a in ("--set", f"task.{key}={value}")]
    assert main(["evaluate", str(tiny_bert_run), "--task", "file", *sets, "--init", "raw"]) == 0
    record = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1])
    expected = fit_linear_probe(raw.train, raw.test, ProbeConfig())
    assert record["accuracy"] == expected["accuracy"] == 1.0 and record["feature_dim"] == expected["feature_dim"]
