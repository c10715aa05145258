"""Text sources -> a ``datasets`` dataset of texts -> packed fixed-length token blocks."""

from __future__ import annotations

import codecs
import contextlib
import glob
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import datasets
from datasets.exceptions import DatasetGenerationError
from transformers import PreTrainedTokenizerBase

from domains.text.tokenizer import TokenizerConfig

HEAD_BYTES = 1 << 20  # each source file's first megabyte is checked before loading (cheap, and names the file)
LOADERS = {".txt": "text", ".text": "text", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class TextDataConfig:
    """A recipe's ``data:`` section for the text domain."""

    source: Literal["embedded", "prepared", "files", "hub", "task"] = "embedded"
    # embedded corpus, `mmssl data prepare` name, Hub dataset name / local dataset folder, or (source=task)
    # a registered fine-tuning task whose training-split texts, never labels or held-out texts, are the corpus
    name: str = "austen"
    paths: list[str] = field(default_factory=list)  # source=files: .txt (one paragraph per sample), .csv, .json(l), .parquet; globs ok
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


def check_source_file(path: Path, key: str) -> None:
    """Fail with one sentence naming ``path`` (and the config ``key``) if ``datasets`` could not read it.

    Reads only the first megabyte: a missing or empty file, a binary file, text that is not
    UTF-8 (UTF-16, Latin-1, ...), a CSV with a header but no rows, a ``.parquet`` that is not one.
    Problems further into a file are explained when loading fails (:func:`load_local_files`).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{key}: {path} is a folder; name the files in it (e.g. {path / ('*' + path.suffix)})")
    if not path.is_file():
        raise FileNotFoundError(f"{key}: text file {path} does not exist")
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as e:
        raise OSError(f"{key}: cannot read text file {path}: {e.strerror}") from e
    if path.suffix.lower() == ".parquet":
        if not head.startswith(b"PAR1"):
            raise ValueError(f"{key}: {path} is not a Parquet file (it does not start with the Parquet signature)")
        return
    if not head.strip():
        raise ValueError(f"{key}: text file {path} is empty")
    _check_text_bytes(head, path, key, complete=len(head) < HEAD_BYTES)
    if path.suffix.lower() == ".csv" and len(head) < HEAD_BYTES and len(head.strip().splitlines()) < 2:
        raise ValueError(f"{key}: CSV file {path} has a header but no rows")


def _utf8_name(path: Path) -> str:
    return path.with_name(f"{path.stem}.utf8{path.suffix}").name


def _check_text_bytes(head: bytes, path: Path, key: str, complete: bool) -> None:
    """UTF-16, binary (NUL bytes) and non-UTF-8 text are errors; ``complete``: ``head`` is the whole file."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ValueError(f"{key}: {path} is UTF-16 text; convert it to UTF-8 first, e.g. "
                         f"iconv -f utf-16 -t utf-8 {path} > {_utf8_name(path)}")
    if b"\0" in head:
        raise ValueError(f"{key}: {path} is a binary file, not text (a NUL byte at offset {head.index(0)}); "
                         f"pass a UTF-8 text file ({', '.join(sorted(LOADERS))})")
    try:  # incremental: a character cut at the end of the first megabyte is not an error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError as e:
        raise ValueError(_not_utf8(path, key, e.start, head[e.start])) from None


def _not_utf8(path: Path, key: str, offset: int, byte: int) -> str:
    return (f"{key}: {path} is not UTF-8 text (byte 0x{byte:02X} at offset {offset:,}); convert it to UTF-8 first, "
            f"e.g. iconv -f latin1 -t utf-8 {path} > {_utf8_name(path)} (latin1 or cp1252 for Western European "
            f"text; `file -i {path}` guesses the encoding)")


def _utf8_problem(path: Path, key: str) -> str | None:
    """The not-UTF-8 message for the first undecodable byte anywhere in ``path``, or None."""
    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(HEAD_BYTES):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                return _not_utf8(path, key, offset + e.start, chunk[e.start] if e.start < len(chunk) else 0)
            offset += len(chunk)
    return None


def _json_problem(path: Path, key: str) -> str | None:
    """Where ``path`` stops being JSON: one document (``[...]``, or ``{...}`` over several lines) or one object per line."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    whole = _json_error(text)
    if whole is None:
        return None
    lines = text.splitlines()
    if _json_error(next((line for line in lines if line.strip()), "")):  # a document over several lines
        return f"{key}: {path} is not valid JSON at line {whole.lineno}, column {whole.colno} ({whole.msg})"
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if error := _json_error(line):
            return f"{key}: {path} line {number} is not valid JSON ({error.msg} at column {error.colno})"
        if not isinstance(json.loads(line), dict):
            return f"{key}: {path} line {number} is not a JSON object (JSON Lines files hold one {{...}} per line)"
    return None


def _json_error(text: str) -> json.JSONDecodeError | None:
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return e
    return None


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


def _load_error(files: list[str], key: str, error: Exception) -> Exception:
    """One sentence for a failed ``datasets.load_dataset`` of local ``files``: which file, and what is wrong."""
    for f in map(Path, files):
        builder = LOADERS.get(f.suffix.lower())
        problem = None if builder == "parquet" else _utf8_problem(f, key)
        if problem is None and builder == "json":
            problem = _json_problem(f, key)
        if problem:
            return ValueError(problem)
    if "corresponds to no data" in str(error):
        return ValueError(f"{key}: {', '.join(files)} {'holds' if len(files) == 1 else 'hold'} no rows")
    return ValueError(f"{key}: cannot read {', '.join(files)}: {str(_root_cause(error)).strip()}")


@contextlib.contextmanager
def _quiet_builder_errors() -> Iterator[None]:
    """``datasets``' file builders log a read error before raising it; the raised one becomes one sentence."""
    logger = logging.getLogger("datasets.packaged_modules")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_local_files(files: list[str], key: str, streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
    """Local ``.txt`` (one paragraph per row), ``.csv``, ``.json(l)`` or ``.parquet`` files as one dataset.

    Used by pretraining sources (``data.paths``) and fine-tuning tasks (``task.path``). Every file is
    checked first (:func:`check_source_file`); a file ``datasets`` still fails on is named with what
    is wrong in it (the undecodable byte, the bad JSON line, the parser's message) as a ``ValueError``.
    """
    for f in files:
        check_source_file(Path(f), key)
    builder = LOADERS[Path(files[0]).suffix.lower()]
    kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
    try:
        with _quiet_builder_errors():
            return datasets.load_dataset(builder, data_files=list(files), split="train", streaming=streaming, **kwargs)
    except (DatasetGenerationError, ValueError) as e:
        if isinstance(e, ValueError) and "corresponds to no data" not in str(e):
            raise
        raise _load_error(list(files), key, e) from None


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
        raise KeyError(f"data.text_column: column {cfg.text_column!r} not in {cfg.source} dataset "
                       f"{cfg.name if cfg.source != 'files' else cfg.paths}; available: {', '.join(columns)}")
    if cfg.max_texts is not None:
        ds = ds.take(cfg.max_texts) if isinstance(ds, datasets.IterableDataset) else ds.select(range(min(cfg.max_texts, len(ds))))
    if cfg.task_texts is not None:
        ds = _with_task_texts(ds, cfg)
    return ds


def task_training_texts(task_name: str, key: str = "data.task_texts") -> datasets.Dataset:
    """The ``text`` column of a registered task's training split, as ``mmssl finetune`` splits it by default."""
    from domains.text.tasks import text_task_data
    from mmssl.finetune import TaskConfig
    from mmssl.registry import TASKS

    if task_name not in TASKS:
        raise KeyError(f"{key}: unknown task {task_name!r}; known: {', '.join(TASKS.names())}")
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
            rows = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=length, verbose=False)["input_ids"]
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
