"""How much can word knowledge from unlabelled text lift a text classifier? A bag-of-embeddings bound.

A pretrained text encoder can beat random init on a classification task in two ways: by knowing what
words mean (lexical knowledge: "dull" is like "tedious") or by knowing how they combine ("not dull").
This experiment measures the first in isolation. It trains a bag-of-embeddings classifier (mean of the
token embeddings -> LayerNorm -> linear, as fastText) on the task's labelled training split, with the
embedding table initialised three ways:

* ``random``: N(0, 0.02), BERT's initialisation;
* ``export``: the input embeddings of an mmssl text export, i.e. what its pretraining learned;
* ``ppmi``: classical unsupervised word vectors (Levy & Goldberg 2014): a truncated SVD of the positive
  pointwise mutual information of token co-occurrences (window 5, context smoothing 0.75), counted on
  the task's training texts (never their labels, never the held-out texts), with the export's tokenizer;
  ``--ppmi-corpus`` adds more unlabelled text to the counts (the offline pretraining corpora, say), to ask
  whether word knowledge from outside the task helps where the task's own texts do not.

Each is trained ``frozen`` (only LayerNorm and the linear layer learn: a probe of the embeddings) and
``tuned`` (the table learns too), at several label budgets and seeds. The epoch is chosen on a
validation slice of the labelled budget (10%), never on the test split.

Reading it: if ``ppmi`` beats ``random`` when frozen but not when tuned with every label, word-level
knowledge is worth nothing once all the labels are available: a pretrained encoder can only beat random
init there by knowing more than words. If ``export`` does not beat ``random`` even when frozen, its
pretraining has not learned what words mean yet.

Usage::

    python experiments/text_lexical_bound.py runs/bert                   # rotten-tomatoes, 500 / 2000 / all labels
    python experiments/text_lexical_bound.py runs/bert --labels 1000 all --seeds 5
    python experiments/text_lexical_bound.py runs/bert --ppmi-corpus austen gcide fortunes kjv   # + 12.6M tokens, ~8 min

Ends with one JSON line. Takes about 7 minutes on 2 CPU cores with the defaults, most of it in the 18 runs on all the labels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.utils.extmath import randomized_svd
from torch.nn.utils.rnn import pad_sequence

INIT_STD = 0.02


def encode(tokenizer: Any, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, L]`` token ids (no special tokens, zero-padded) and their ``[N, L]`` validity mask."""
    rows = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    ids = pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True)
    if ids.shape[1] == 0:
        raise ValueError("every text tokenizes to nothing")
    return ids, torch.arange(ids.shape[1]) < torch.tensor([len(r) for r in rows])[:, None]


def cooccurrence_counts(ids: torch.Tensor, mask: torch.Tensor, vocab_size: int, window: int = 5) -> sp.csr_matrix:
    """``[vocab_size, vocab_size]`` counts of token pairs within ``window`` positions of each other in a text,
    both directions."""
    rows, cols = [], []
    for d in range(1, window + 1):
        pair = mask[:, d:] & mask[:, :-d]
        left, right = ids[:, :-d][pair], ids[:, d:][pair]
        rows += [left, right]
        cols += [right, left]
    r, c = torch.cat(rows).numpy(), torch.cat(cols).numpy()
    return sp.csr_matrix((np.ones(r.size), (r, c)), shape=(vocab_size, vocab_size))  # duplicates are summed


def count_texts(
    tokenizer: Any, texts: list[str], vocab_size: int, window: int = 5, max_length: int = 4096, chunk: int = 10_000
) -> tuple[sp.csr_matrix, int]:
    """Co-occurrence counts of a list of texts, tokenized ``chunk`` texts at a time (bounded memory), and the
    number of tokens counted. Texts are cut at ``max_length`` tokens."""
    texts = sorted(texts, key=len)  # chunks of similar lengths pad little; the counts do not depend on order
    counts, tokens = sp.csr_matrix((vocab_size, vocab_size)), 0
    for start in range(0, len(texts), chunk):
        ids, mask = encode(tokenizer, texts[start : start + chunk], max_length)
        counts = counts + cooccurrence_counts(ids, mask, vocab_size, window)
        tokens += int(mask.sum())
    return counts, tokens


def ppmi_embeddings(counts: sp.spmatrix, dim: int, alpha: float = 0.75, seed: int = 0) -> torch.Tensor:
    """``[vocab_size, dim]`` word vectors: SVD of the positive PMI of co-occurrence ``counts``.

    The context distribution is smoothed with exponent ``alpha`` (Levy, Goldberg & Dagan 2015). Rows are
    ``U * sqrt(S)``, rescaled to the standard deviation of BERT's initialisation so that every init trains at
    the same learning rate.
    """
    counts = sp.coo_matrix(counts)
    if counts.nnz == 0:
        raise ValueError("no two tokens co-occur within the window: the texts are too short for PPMI")
    vocab_size = counts.shape[0]
    total = counts.data.sum()
    word = np.asarray(counts.sum(1)).ravel()
    context = np.asarray(counts.sum(0)).ravel() ** alpha
    context = context / context.sum() * total
    pmi = np.log(counts.data * total / (word[counts.row] * context[counts.col]))
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (counts.row[keep], counts.col[keep])), shape=(vocab_size, vocab_size))
    u, s, _ = randomized_svd(ppmi, min(dim, vocab_size - 1), random_state=seed)
    vectors = np.zeros((vocab_size, dim))
    vectors[:, : u.shape[1]] = u * np.sqrt(s)
    return torch.tensor(vectors / (vectors.std() + 1e-12) * INIT_STD, dtype=torch.float32)


def corpus_texts(name: str) -> list[str]:
    """The texts of an embedded corpus (``austen``) or of an offline dataset ``mmssl data prepare`` builds."""
    from domains.text.builders import EMBEDDED_CORPORA
    from domains.text.corpus import TextDataConfig, load_texts

    source = "embedded" if name in EMBEDDED_CORPORA else "prepared"
    return list(load_texts(TextDataConfig(source=source, name=name))["text"])


class BagClassifier(nn.Module):
    """Mean of the token embeddings -> LayerNorm -> linear (fastText's architecture, plus a norm)."""

    def __init__(self, table: torch.Tensor, num_labels: int, freeze: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(table.clone(), freeze=freeze)
        self.norm = nn.LayerNorm(table.shape[1])
        self.head = nn.Linear(table.shape[1], num_labels)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(ids) * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(self.norm(pooled))


@torch.no_grad()
def accuracy(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return (model(ids, mask).argmax(-1) == labels).float().mean().item()


def train_bag(
    table: torch.Tensor,
    freeze: bool,
    train: tuple[torch.Tensor, ...],
    test: tuple[torch.Tensor, ...],
    num_labels: int,
    seed: int,
    epochs: int = 15,
    lr: float = 1e-3,
    batch_size: int = 32,
    val_fraction: float = 0.1,
) -> dict[str, float]:
    """Train on ``train`` (ids, mask, labels) less a validation slice; test accuracy at the best validation epoch
    (the latest among ties)."""
    g = torch.Generator().manual_seed(seed)
    ids, mask, labels = train
    order = torch.randperm(len(labels), generator=g)
    n_val = max(1, int(len(labels) * val_fraction))
    val, fit = order[:n_val], order[n_val:]
    torch.manual_seed(seed)
    model = BagClassifier(table, num_labels, freeze)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    best = (-1.0, 0.0, 0)
    for epoch in range(1, epochs + 1):
        model.train()
        for b in fit[torch.randperm(len(fit), generator=g)].split(batch_size):
            loss = F.cross_entropy(model(ids[b], mask[b]), labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        val_acc = accuracy(model, ids[val], mask[val], labels[val])
        if val_acc >= best[0]:  # ties go to the later, better-trained epoch
            best = (val_acc, accuracy(model, *test), epoch)
    return {"val_accuracy": best[0], "accuracy": best[1], "epoch": best[2]}


def input_embeddings(export_dir: Path) -> torch.Tensor:
    """The input embedding table of a transformers export (BERT, GPT-2, ...), float32."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the MLM head's weights are unused here: no load report
    try:
        model = AutoModel.from_pretrained(str(export_dir))
    finally:
        hf_logging.set_verbosity(level)
    return model.get_input_embeddings().weight.detach().float().clone()


def run_bound(
    export_dir: Path,
    task: Any,
    budgets: list[int | None],
    seeds: int,
    epochs: int = 15,
    window: int = 5,
    ppmi_corpus: list[str] | tuple[str, ...] = (),
    log: Any = print,
) -> dict[str, Any]:
    """The bag-of-embeddings results for every (labels, init, mode) over ``seeds`` seeds.

    The PPMI vectors are counted on the task's training texts plus the texts of every corpus in ``ppmi_corpus``.
    """
    from transformers import AutoTokenizer

    from domains.text.tasks import text_task_data

    tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
    data = text_task_data(task)
    train_ids, train_mask = encode(tokenizer, data.train["text"], task.max_length)
    test = (*encode(tokenizer, data.test["text"], task.max_length), torch.tensor(data.test["label"]))
    train_labels = torch.tensor(data.train["label"])
    num_labels = len(data.label_names)
    export_table = input_embeddings(export_dir)
    vocab, dim = export_table.shape
    top = max(int(train_ids.max()), int(test[0].max()))
    if top >= vocab:
        raise ValueError(f"{export_dir}: the tokenizer emits id {top} but the model has {vocab} embeddings")
    t0 = time.perf_counter()
    counts, ppmi_tokens = cooccurrence_counts(train_ids, train_mask, vocab, window), int(train_mask.sum())
    for name in ppmi_corpus:
        extra, tokens = count_texts(tokenizer, corpus_texts(name), vocab, window)
        counts, ppmi_tokens = counts + extra, ppmi_tokens + tokens
        log(f"PPMI counts: {tokens:,} tokens of {name}")
    tables = {
        "random": torch.randn(vocab, dim, generator=torch.Generator().manual_seed(0)) * INIT_STD,
        "export": export_table,
        "ppmi": ppmi_embeddings(counts, dim),
    }
    log(
        f"PPMI vectors from {ppmi_tokens:,} tokens ({len(train_labels)} training texts"
        f"{''.join(' + ' + n for n in ppmi_corpus)}) in {time.perf_counter() - t0:.1f} s"
    )
    results = []
    for budget in budgets:
        n = len(train_labels) if budget is None else min(budget, len(train_labels))
        for name, table in tables.items():
            for freeze in (True, False):
                runs = []
                for seed in range(seeds):
                    pick = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(1000 + seed))[:n]
                    runs.append(
                        train_bag(
                            table,
                            freeze,
                            (train_ids[pick], train_mask[pick], train_labels[pick]),
                            test,
                            num_labels,
                            seed,
                            epochs,
                        )["accuracy"]
                    )
                row = {
                    "labels": n,
                    "init": name,
                    "mode": "frozen" if freeze else "tuned",
                    "accuracy": statistics.mean(runs),
                    "std": statistics.pstdev(runs),
                    "runs": runs,
                }
                results.append(row)
                log(f"{n:>6} labels  {name:<7} {row['mode']:<7} {row['accuracy']:.4f} +- {row['std']:.4f}")
    return {"n_train": len(train_labels), "n_test": len(test[2]), "ppmi_tokens": ppmi_tokens, "results": results}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="an mmssl text run directory or export folder")
    p.add_argument("--task", default="rotten-tomatoes", help="a registered task, or `file` with --task-path")
    p.add_argument("--task-path", help="--task file: a .csv/.json(l)/.parquet file")
    p.add_argument("--input-column", default=None)
    p.add_argument("--label-column", default="label")
    p.add_argument("--labels", nargs="+", default=["500", "2000", "all"], help="label budgets (numbers or `all`)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--window", type=int, default=5)
    p.add_argument(
        "--ppmi-corpus",
        nargs="+",
        default=[],
        metavar="NAME",
        help="count the PPMI vectors on these corpora too (embedded `austen` or `mmssl data prepare` names)",
    )
    args = p.parse_args(argv)
    from mmssl.export import resolve_export
    from mmssl.tasks import TaskConfig

    export_dir, _ = resolve_export(Path(args.run))
    task = replace(
        TaskConfig(),
        name=args.task,
        path=args.task_path,
        input_column=args.input_column,
        label_column=args.label_column,
    )
    budgets = [None if b == "all" else int(b) for b in args.labels]
    report = run_bound(export_dir, task, budgets, args.seeds, args.epochs, args.window, args.ppmi_corpus)
    record = {
        "benchmark": "text_lexical_bound",
        "export": str(export_dir),
        "task": args.task,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "window": args.window,
        "ppmi_corpus": ["task", *args.ppmi_corpus],
        **report,
    }
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    main()
