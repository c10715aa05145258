"""Tests for the offline text datasets (domains/text/builders.py, parsing.py).

The fast tests use the embedded data and tiny synthetic inputs; the ``slow`` ones
download Debian packages / a PyPI wheel and run every builder end to end
(opt-in: ``pytest -m slow``).
"""

from __future__ import annotations

import csv
import gzip
import io
import shutil
import time
from pathlib import Path

import datasets
import pytest

from domains.text import builders, parsing
from domains.text.builders import load_embedded_corpus, load_rotten_tomatoes
from domains.text.parsing import (
    clean_gcide_entry,
    clean_rst_inline,
    format_embedded_corpus,
    gcide_entries,
    parse_bible_dump,
    parse_dictd_index,
    parse_embedded_corpus,
    rotten_tomatoes_rows,
    rst_paragraphs,
    split_fortunes,
    split_paragraphs,
)
from mmssl import datasets as mmssl_datasets
from mmssl.config import MmsslError
from mmssl.registry import DATASETS

BUILDER_NAMES = ["austen", "kjv", "gcide", "python-docs", "fortunes", "rotten-tomatoes"]
AUSTEN_TITLES = ["Sense & Sensibility", "Pride & Prejudice", "Mansfield Park", "Emma", "Northanger Abbey", "Persuasion"]


# --------------------------------------------------------------------------- embedded data
def test_embedded_austen_corpus() -> None:
    ds = load_embedded_corpus("austen")
    assert ds.column_names == ["text", "book"]
    assert ds.num_rows == 10_298
    assert list(dict.fromkeys(ds["book"])) == AUSTEN_TITLES
    assert all(text and text == " ".join(text.split()) for text in ds["text"])
    assert ds[0]["text"] == "SENSE AND SENSIBILITY"
    assert any(text.startswith("It is a truth universally acknowledged") for text in ds["text"])


def test_embedded_corpus_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match="austen"):
        load_embedded_corpus("shakespeare")


def test_embedded_rotten_tomatoes() -> None:
    ds = load_rotten_tomatoes()
    assert ds.column_names == ["text", "label"]
    assert ds.num_rows == 12_752
    assert ds.features["label"].dtype == "int64"
    assert set(ds["label"]) == {0, 1}
    assert sum(ds["label"]) / ds.num_rows == pytest.approx(0.578, abs=0.001)
    assert len(set(ds["text"])) == ds.num_rows
    assert all(isinstance(text, str) and text.strip() for text in ds["text"])


def test_embedded_loaders_are_fast() -> None:
    for load in (load_embedded_corpus, load_rotten_tomatoes):
        start = time.perf_counter()
        load()
        assert time.perf_counter() - start < 2.0


def test_embedded_files_are_small() -> None:
    assert (builders.EMBEDDED_DIR / "austen.txt.gz").stat().st_size < 2_000_000
    assert (builders.EMBEDDED_DIR / "rotten_tomatoes.csv.gz").stat().st_size < 1_000_000
    assert (builders.EMBEDDED_DIR / "README.md").exists()


def test_embedded_corpus_round_trip() -> None:
    books = {"Book A": ["First  para\nwrapped.", "Second."], "Book B": ["", "Only one."]}
    text = format_embedded_corpus(books)
    assert text.startswith("# Book A\n\nFirst para wrapped.\n\nSecond.\n\n# Book B\n\nOnly one.")
    assert parse_embedded_corpus(text) == (
        ["First para wrapped.", "Second.", "Only one."],
        ["Book A", "Book A", "Book B"],
    )
    with pytest.raises(ValueError):
        format_embedded_corpus({"Bad": ["# looks like a title"]})
    with pytest.raises(ValueError):
        parse_embedded_corpus("a paragraph before any title\n")


# --------------------------------------------------------------------------- parsing
def test_split_paragraphs_joins_wrapped_lines() -> None:
    text = "  First line\nwrapped   here.\n\n\n \t\nSecond\tparagraph.\n  \nThird."
    assert split_paragraphs(text) == ["First line wrapped here.", "Second paragraph.", "Third."]
    assert split_paragraphs("\n\n  \n") == []


def test_split_fortunes_on_percent_lines() -> None:
    text = "A quote\n  that wraps.\n%\n%\nSecond -- Author\n%   \n100% sure, not a separator.\n%\n"
    assert split_fortunes(text) == ["A quote that wraps.", "Second -- Author", "100% sure, not a separator."]


def test_parse_bible_dump() -> None:
    output = "Ge1:1 In the beginning God created the heaven and the earth.\n\n1Jo1:1 That which  was.\n"
    assert parse_bible_dump(output) == ["In the beginning God created the heaven and the earth.", "That which was."]
    with pytest.raises(RuntimeError, match="bible"):
        parse_bible_dump("Genesis 1\n")


def test_clean_gcide_entry_strips_markup() -> None:
    raw = (
        'Abandon \\A*ban"don\\ ([.a]*b[a^]n"d[u^]n), v. t. [imp. & p. p.\n'
        "   {Abandoned}; F. abandonner; Gr. ? even.]\n"
        "   1. To cast out; the [ae]ther of [alpha] Centauri. [Obs.]\n"
        "      [1913 Webster]\n"
        "            That he might abandon them. --Udall.\n      [Webster 1913 Suppl. +PJC]\n"
    )
    cleaned = clean_gcide_entry(raw)
    assert cleaned.startswith("Abandon, v. t. [imp. & p. p. Abandoned; F. abandonner; Gr. even.]")
    assert "æther of α Centauri. [Obs.]" in cleaned
    assert "Webster" not in cleaned and "{" not in cleaned and "\\" not in cleaned
    assert "\n" not in cleaned and "  " not in cleaned
    assert clean_gcide_entry('Aerie \\A"["e]*rie\\ (A["e]ronautics) A nest.') == "Aerie (Aëronautics) A nest."


def test_parse_dictd_index_and_entries() -> None:
    first = 'Apple \\Ap"ple\\, n.\n   A fruit.\n   [1913 Webster]\n'
    second = "Pear, n. A fruit.\n"
    data = (first + "\n" + second).encode()
    # dictd numbers are base 64 with the alphabet A-Za-z0-9+/: "A" = 0, "B" = 1, "BA" = 64.
    assert parsing._dictd_number("BA") == 64
    off2 = len(first) + 1
    b64 = parsing._B64
    index = "\n".join(
        [
            "00-database-short\tA\tB",
            f"apple\tA\t{b64[len(first) // 64]}{b64[len(first) % 64]}",
            f"apples\tA\t{b64[len(first) // 64]}{b64[len(first) % 64]}",  # inflection: same span
            f"pear\t{b64[off2 // 64]}{b64[off2 % 64]}\t{b64[len(second)]}",
        ]
    )
    assert parse_dictd_index(index) == [(0, len(first)), (off2, len(second))]
    assert gcide_entries(index, data) == ["Apple, n. A fruit.", "Pear, n. A fruit."]


def test_rst_paragraphs_keeps_prose_only() -> None:
    source = """\
:mod:`glob` --- Pattern expansion
=================================

.. module:: glob
   :synopsis: Unix shell style pathname pattern expansion.

.. index:: single: filenames; pathname expansion

The :mod:`glob` module finds all the pathnames matching a
*pattern*, see :ref:`the docs <glob-docs>` and ``fnmatch``.

.. function:: glob(pathname, *, \\
                   recursive=False)

   Return a list of **path** names.

   .. versionchanged:: 3.5
      Support for recursive globs.

For example::

   import glob
   glob.glob("*.py")

   print("still code")

>>> glob.glob('*.gif')
['card.gif']

+------+------+
| a    | b    |
+------+------+

.. This is a comment
   spanning two lines.

After the comment.
"""
    assert rst_paragraphs(source) == [
        "glob --- Pattern expansion",
        "The glob module finds all the pathnames matching a pattern, see the docs and fnmatch.",
        "Return a list of path names.",
        "Support for recursive globs.",
        "For example:",
        "After the comment.",
    ]


def test_clean_rst_inline() -> None:
    assert clean_rst_inline(":func:`~os.path.join` and `link <http://x.org>`_") == "os.path.join and link"
    assert clean_rst_inline("``a*b`` is *emphasised* and \\*escaped\\*") == "a*b is emphasised and *escaped*"
    assert clean_rst_inline("Example ::") == "Example"
    assert clean_rst_inline("::") == ""


def _csv(rows: list[tuple[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["category", "text", "movie_name"])
    writer.writerows((category, text, "m") for category, text in rows)
    return out.getvalue()


def test_rotten_tomatoes_rows_filters_and_deduplicates() -> None:
    csv_text = _csv(
        [
            ("plot", "A plot summary."),
            ("fresh", "Great  fun."),
            ("rotten", "Dull,\nvery dull."),
            ("rotten", "Great fun."),  # duplicate after whitespace normalisation: first wins
            ("fresh", "   "),
            ("fresh", 'Says "wow", twice.'),
        ]
    )
    texts, labels = rotten_tomatoes_rows(csv_text)
    assert texts == ["Great fun.", "Dull, very dull.", 'Says "wow", twice.']
    assert labels == [1, 0, 1]


# --------------------------------------------------------------------------- registration and errors
def test_builders_are_registered() -> None:
    for name in BUILDER_NAMES:
        assert name in DATASETS
        builder = DATASETS.get(name)
        assert builder.domain == "text" and builder.name == name
        assert builder.resolve() is getattr(builders, f"build_{name.replace('-', '_')}")


def test_failed_build_leaves_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shutil, "which", lambda tool: None)  # no apt-get / dpkg on this "system"
    with pytest.raises(MmsslError, match="mmssl data prepare kjv failed: .*dpkg"):  # one line from the CLI
        mmssl_datasets.prepare("kjv")
    assert not mmssl_datasets.is_prepared("kjv")
    assert not mmssl_datasets.dataset_dir("kjv").exists()


# --------------------------------------------------------------------------- real downloads (opt-in)
EXPECTED_ROWS = {  # (min, max); the Debian packages may get updates
    "austen": (10_298, 10_298),
    "kjv": (31_102, 31_102),
    "gcide": (120_000, 135_000),
    "python-docs": (40_000, 55_000),
    "fortunes": (14_000, 16_000),
    "rotten-tomatoes": (12_752, 12_752),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILDER_NAMES)
def test_builder_end_to_end(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSSL_CACHE", str(tmp_path))
    ds = datasets.load_from_disk(str(mmssl_datasets.prepare(name)))
    low, high = EXPECTED_ROWS[name]
    assert low <= ds.num_rows <= high
    assert ds.column_names[0] == "text"
    assert all(text and text == " ".join(text.split()) for text in ds["text"])
    if name == "austen":
        assert ds.to_dict() == load_embedded_corpus("austen").to_dict()
    if name == "rotten-tomatoes":
        assert ds.to_dict() == load_rotten_tomatoes().to_dict()


@pytest.mark.slow
def test_write_embedded_reproduces_committed_files(tmp_path: Path) -> None:
    builders.write_embedded(tmp_path)
    for name in ("austen.txt.gz", "rotten_tomatoes.csv.gz"):
        fresh = gzip.decompress((tmp_path / name).read_bytes())
        assert fresh == gzip.decompress((builders.EMBEDDED_DIR / name).read_bytes())
