"""Text sources -> a ``datasets`` dataset of texts -> packed fixed-length token blocks."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
from transformers import PreTrainedTokenizerBase

from domains.text.files import LOADERS, load_local_files
from domains.text.tasks import text_task_data
from domains.text.tokenizer import TokenizerConfig
from mmssl.registry import registered_tasks
from mmssl.tasks import TaskConfig


@dataclass(frozen=True)
class TextDataConfig:
    """A recipe's ``data:`` section for the text domain."""

    source: Literal["embedded", "prepared", "files", "hub", "task"] = "embedded"
    # embedded corpus, `mmssl data prepare` name, Hub dataset name / local dataset folder, or (source=task)
    # a registered fine-tuning task whose training-split texts, never labels or held-out texts, are the corpus
    name: str = "austen"
    paths: list[str] = field(
        default_factory=list
    )  # source=files: .txt (one paragraph per sample), .csv, .json(l), .parquet; globs ok
    hub_config: str | None = None  # source=hub: dataset configuration name
    split: str = "train"
    text_column: str = "text"
    streaming: bool = False  # iterate without loading everything (IterableDataset, sharded per process)
    block_size: int = 128  # tokens per packed block, special tokens included
    # concat: join all texts and cut fixed blocks (RoBERTa FULL-SENTENCES); line: one text per
    # sample, truncated to block_size and padded per batch (run_mlm.py --line_by_line), so the
    # context never crosses a document boundary (short documents such as reviews or sentences)
    packing: Literal["concat", "line"] = "concat"
    sentence_pairs: bool = False  # blocks become [CLS] A [SEP] B [SEP] with A/B randomly swapped (ALBERT SOP)
    max_texts: int | None = None  # use only the first N texts (quick experiments)
    # task-adaptive pretraining (Gururangan et al. 2020): add the texts, not the labels, of this task's
    # training split (a registered task, split with the default test_fraction/split_seed; test texts are never read)
    task_texts: str | None = None
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def __post_init__(self) -> None:
        if self.block_size < 8:
            raise ValueError("data.block_size must be >= 8")
        if self.packing == "line" and self.sentence_pairs:
            raise ValueError("data.sentence_pairs needs data.packing=concat (pairs are cut from full blocks)")
        if self.source == "files" and not self.paths:
            raise ValueError("data.paths must list at least one file when data.source=files")


def _check_files(patterns: list[str]) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matched:
            raise FileNotFoundError(f"data.paths: no file matches {pattern!r}")
        files.extend(matched)
    suffixes = {Path(f).suffix.lower() for f in files}
    if len(suffixes) != 1 or next(iter(suffixes)) not in LOADERS:
        raise ValueError(f"data.paths: files must share one of the suffixes {sorted(LOADERS)}, got {sorted(suffixes)}")
    return files


def load_texts(cfg: TextDataConfig) -> datasets.Dataset | datasets.IterableDataset:
    """Load the configured source as a dataset with one text per row in ``cfg.text_column``."""
    if cfg.source == "embedded":
        from domains.text.builders import load_embedded_corpus

        ds = load_embedded_corpus(cfg.name)
        if cfg.streaming:
            ds = ds.to_iterable_dataset(num_shards=8)
    elif cfg.source == "prepared":
        from mmssl.datasets import prepare

        ds = datasets.load_from_disk(str(prepare(cfg.name)))
        if cfg.streaming:
            ds = ds.to_iterable_dataset(num_shards=8)
    elif cfg.source == "files":
        ds = load_local_files(_check_files(cfg.paths), "data.paths", cfg.streaming)
    elif cfg.source == "task":
        ds = task_training_texts(cfg.name, "data.name")
        if cfg.text_column != "text":
            ds = ds.rename_column("text", cfg.text_column)
        if cfg.streaming:
            ds = ds.to_iterable_dataset(num_shards=8)
    else:
        ds = datasets.load_dataset(cfg.name, cfg.hub_config, split=cfg.split, streaming=cfg.streaming)
    columns = ds.column_names
    if columns is not None and cfg.text_column not in columns:
        raise KeyError(
            f"data.text_column: column {cfg.text_column!r} not in {cfg.source} dataset "
            f"{cfg.name if cfg.source != 'files' else cfg.paths}; available: {', '.join(columns)}"
        )
    if cfg.max_texts is not None:
        ds = (
            ds.take(cfg.max_texts)
            if isinstance(ds, datasets.IterableDataset)
            else ds.select(range(min(cfg.max_texts, len(ds))))
        )
    if cfg.task_texts is not None:
        ds = _with_task_texts(ds, cfg)
    return ds


def task_training_texts(task_name: str, key: str = "data.task_texts") -> datasets.Dataset:
    """The ``text`` column of a registered task's training split, as ``mmssl finetune`` splits it by default."""
    known = registered_tasks("text")
    if task_name not in known:  # a task of another domain (fashion-mnist) holds no texts either
        raise KeyError(f"{key}: unknown task {task_name!r}; the text tasks: {', '.join(known)}")
    return text_task_data(TaskConfig(name=task_name)).train.select_columns(["text"])


def _with_task_texts(ds: Any, cfg: TextDataConfig) -> Any:
    if isinstance(ds, datasets.IterableDataset):
        raise ValueError("data.task_texts cannot be combined with data.streaming=true")
    corpus = ds.select_columns([cfg.text_column])
    texts = task_training_texts(cfg.task_texts)
    if cfg.text_column != "text":
        texts = texts.rename_column("text", cfg.text_column)
    texts = texts.cast(corpus.features)
    return datasets.concatenate_datasets([corpus, texts])


def iter_texts(ds: Any, column: str):
    """Yield non-empty texts (used to train a tokenizer)."""
    for row in ds:
        text = row[column]
        if isinstance(text, str) and text.strip():
            yield text


def pack_blocks(ds: Any, tokenizer: PreTrainedTokenizerBase, column: str, length: int, packing: str = "concat") -> Any:
    """Tokenize every text, join them with a separator, and cut the stream into ``length``-token blocks.

    Documents are separated by ``[SEP]`` (BERT) or ``<|endoftext|>`` (GPT), as in RoBERTa's
    FULL-SENTENCES packing (Liu et al. 2019); the remainder of each map batch is dropped.
    Returns a dataset with one ``input_ids`` list of exactly ``length`` ids per row.

    With ``packing="line"`` each non-empty text is its own row instead, truncated to ``length``
    ids (rows then vary in length; :class:`~domains.text.collate.BlockCollator` pads them).
    """
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id

    def tokenize_and_pack(batch: dict[str, list]) -> dict[str, list]:
        texts = [t for t in batch[column] if isinstance(t, str) and t.strip()]
        if packing == "line":
            rows = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=length, verbose=False)[
                "input_ids"
            ]
            return {"input_ids": [r for r in rows if r]}
        ids: list[int] = []
        for seq in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
            ids.extend(seq)
            ids.append(sep)
        n = len(ids) // length * length
        return {"input_ids": [ids[i : i + length] for i in range(0, n, length)]}

    remove = ds.column_names
    kwargs = {} if isinstance(ds, datasets.IterableDataset) else {"desc": "tokenize + pack"}
    return ds.map(tokenize_and_pack, batched=True, batch_size=2000, remove_columns=remove, **kwargs)
