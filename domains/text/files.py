"""The user's local text files (``data.paths`` of a recipe, ``task.path`` of a task) read as one ``datasets``
dataset: ``.txt`` (one paragraph per row), ``.csv``, ``.json(l)`` or ``.parquet``.

Each file is checked before ``datasets`` reads it, and a file it still fails on is named with what is
wrong in it, so a bad file is one sentence that names it, never a traceback from deep in a parser.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError

HEAD_BYTES = 1 << 20  # each source file's first megabyte is checked before loading (cheap, and names the file)
LOADERS = {".txt": "text", ".text": "text", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


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
        raise ValueError(
            f"{key}: {path} is UTF-16 text; convert it to UTF-8 first, e.g. "
            f"iconv -f utf-16 -t utf-8 {path} > {_utf8_name(path)}"
        )
    if b"\0" in head:
        raise ValueError(
            f"{key}: {path} is a binary file, not text (a NUL byte at offset {head.index(0)}); "
            f"pass a UTF-8 text file ({', '.join(sorted(LOADERS))})"
        )
    try:  # incremental: a character cut at the end of the first megabyte is not an error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError as e:
        raise ValueError(_not_utf8(path, key, e.start, head[e.start])) from None


def _not_utf8(path: Path, key: str, offset: int, byte: int) -> str:
    return (
        f"{key}: {path} is not UTF-8 text (byte 0x{byte:02X} at offset {offset:,}); convert it to UTF-8 first, "
        f"e.g. iconv -f latin1 -t utf-8 {path} > {_utf8_name(path)} (latin1 or cp1252 for Western European "
        f"text; `file -i {path}` guesses the encoding)"
    )


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


def load_local_files(
    files: list[str], key: str, streaming: bool = False
) -> datasets.Dataset | datasets.IterableDataset:
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
