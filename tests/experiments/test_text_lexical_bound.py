"""experiments/text_lexical_bound.py: PPMI vectors carry co-occurrence structure that a bag classifier can use."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
from experiment_loader import load_experiment
from transformers import BertConfig, BertForMaskedLM

from domains.text.tokenizer import TokenizerConfig, train_tokenizer


def _pseudo_words(consonants: str, n: int) -> list[str]:
    """``n`` distinct made-up words (consonant-vowel-consonant-vowel-consonant) from the given consonants."""
    rng = random.Random(consonants)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(consonants) if i % 2 == 0 else rng.choice("aeiou") for i in range(5)))
    return sorted(words)


# two disjoint "polarity" vocabularies, too many words for a few labels to cover
POSITIVE = _pseudo_words("bdfgklm", 150)
NEGATIVE = _pseudo_words("nprstvz", 150)
FILLER = "the a film movie story plot cast scene it is this was and of".split()


@pytest.fixture(scope="module")
def bound():
    yield from load_experiment("text_lexical_bound")


def _texts(n: int, seed: int = 0, polar: int = 4) -> list[tuple[str, str]]:
    """Each text draws ``polar`` words of one polarity (its label) and ``6 - polar`` fillers, shuffled."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(POSITIVE if label == "pos" else NEGATIVE, polar) + rng.sample(FILLER, 6 - polar)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small BERT export (random weights) whose tokenizer keeps every word whole, and a labelled CSV."""
    root = tmp_path_factory.mktemp("lexical")
    rows = _texts(600)
    tokenizer = train_tokenizer(
        iter([t for t, _ in rows] * 3), TokenizerConfig(vocab_size=2000, min_frequency=1), "bert", 64
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model.save_pretrained(root / "export")
    tokenizer.save_pretrained(root / "export")
    with open(root / "reviews.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "verdict"])
        writer.writerows(rows)
    return root / "export", root / "reviews.csv"


def test_ppmi_vectors_place_co_occurring_words_together(bound, export) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(export[0]))
    ids, mask = bound.encode(tokenizer, [t for t, _ in _texts(600)], max_length=16)
    assert mask.sum(1).eq(6).all()  # six whole words per text, no special tokens
    counts = bound.cooccurrence_counts(ids, mask, len(tokenizer), window=5)
    # each six-word text holds 5 + 4 + 3 + 2 + 1 pairs within 5 positions, counted in both directions
    assert counts.sum() == 600 * 15 * 2 and (counts != counts.T).nnz == 0
    vectors = bound.ppmi_embeddings(counts, dim=16)
    assert vectors.shape == (len(tokenizer), 16) and vectors.std().item() == pytest.approx(bound.INIT_STD, rel=1e-3)
    unit = torch.nn.functional.normalize(vectors, dim=1)
    words = tokenizer.convert_tokens_to_ids(POSITIVE + NEGATIVE)
    polarity = torch.tensor([0] * len(POSITIVE) + [1] * len(NEGATIVE))
    cos = unit[words] @ unit[words].T
    nearest = cos.fill_diagonal_(-2.0).argmax(1)
    # words of one polarity share contexts, the two polarities never do: nearest neighbours agree
    assert (polarity[nearest] == polarity).float().mean() > 0.9
    with pytest.raises(ValueError, match="too short for PPMI"):
        bound.ppmi_embeddings(bound.cooccurrence_counts(ids[:, :1], mask[:, :1], len(tokenizer)), dim=8)


def test_command_line_frozen_ppmi_beats_frozen_random(bound, export, capsys: pytest.CaptureFixture[str]) -> None:
    returned = bound.main(
        [
            str(export[0]),
            "--task",
            "file",
            "--task-path",
            str(export[1]),
            "--input-column",
            "review",
            "--label-column",
            "verdict",
            "--labels",
            "48",
            "all",
            "--seeds",
            "2",
            "--epochs",
            "100",
        ]
    )
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record == returned and record["benchmark"] == "text_lexical_bound"
    assert record["n_train"] == 480 and record["n_test"] == 120
    acc = {(r["labels"], r["init"], r["mode"]): r["accuracy"] for r in record["results"]}
    assert len(acc) == 2 * 3 * 2
    assert {r["labels"] for r in record["results"]} == {48, 480}
    assert all(len(r["runs"]) == 2 and 0.0 <= r["accuracy"] <= 1.0 for r in record["results"])
    # frozen tables probe what the embeddings know: PPMI vectors separate the two vocabularies, random
    # vectors (the table and the untrained export alike) leave a linear head little to work with
    assert acc[(480, "ppmi", "frozen")] > 0.95
    assert acc[(480, "ppmi", "frozen")] > max(acc[(480, "random", "frozen")], acc[(480, "export", "frozen")]) + 0.2
    # tuned with every label the task is easy from any start
    assert min(acc[(480, init, "tuned")] for init in ("random", "export", "ppmi")) > 0.95


def test_vocabulary_mismatch_is_an_error(bound, export, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    small = tmp_path / "small"
    BertForMaskedLM(
        BertConfig(
            vocab_size=20,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
        )
    ).save_pretrained(small)
    AutoTokenizer.from_pretrained(str(export[0])).save_pretrained(small)
    with pytest.raises(ValueError, match="model has 20 embeddings"):
        bound.main(
            [
                str(small),
                "--task",
                "file",
                "--task-path",
                str(export[1]),
                "--input-column",
                "review",
                "--label-column",
                "verdict",
                "--labels",
                "24",
                "--seeds",
                "1",
            ]
        )


def test_counting_in_chunks_matches_counting_at_once(bound, export) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(export[0]))
    texts = [t for t, _ in _texts(50, seed=3)]
    ids, mask = bound.encode(tokenizer, texts, max_length=16)
    counts, tokens = bound.count_texts(tokenizer, texts, len(tokenizer), window=3, chunk=7)
    assert tokens == 50 * 6
    assert (counts != bound.cooccurrence_counts(ids, mask, len(tokenizer), window=3)).nnz == 0


def test_ppmi_corpus_adds_word_knowledge_the_task_texts_lack(
    bound, export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task's texts hold one polarity word among fillers, so their co-occurrences cannot tell the two
    vocabularies apart; an unlabelled corpus whose texts hold four same-polarity words can, and its counts make
    the frozen PPMI table separate the task's classes."""
    from dataclasses import replace

    from mmssl.tasks import TaskConfig

    small = tmp_path / "small.csv"
    with open(small, "w", newline="") as f:
        csv.writer(f).writerows([("review", "verdict"), *_texts(200, seed=5, polar=1)])
    extra = [t for t, _ in _texts(1000, seed=6)]
    monkeypatch.setattr(bound, "corpus_texts", lambda name: {"reviews-extra": extra}[name])
    task = replace(TaskConfig(), name="file", path=str(small), input_column="review", label_column="verdict")
    frozen = {}
    for corpus in ((), ("reviews-extra",)):
        report = bound.run_bound(export[0], task, [None], seeds=1, epochs=60, ppmi_corpus=corpus, log=lambda *_: None)
        assert report["ppmi_tokens"] == 6 * (160 + len(corpus) * 1000)
        frozen[corpus] = next(r["accuracy"] for r in report["results"] if r["init"] == "ppmi" and r["mode"] == "frozen")
    assert frozen[("reviews-extra",)] > 0.9 and frozen[("reviews-extra",)] > frozen[()] + 0.2
