"""Text sources, packing, tokenizers, and clear errors for bad input."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import datasets
import pytest

from domains.text.corpus import TextDataConfig, load_texts, pack_blocks
from domains.text.tokenizer import BERT_SPECIALS, TokenizerConfig, train_tokenizer
from mmssl.pretrain import pretrain
from tests.conftest import TINY

PARAGRAPHS = [
    "It is a truth universally acknowledged.",
    "That a single man in possession of a good fortune.",
    "Must be in want of a wife.",
] * 40


def _tokenizer(arch: str = "bert"):
    return train_tokenizer(iter(PARAGRAPHS), TokenizerConfig(vocab_size=120, min_frequency=1), arch, 64)


def test_packing_fills_blocks_with_separators() -> None:
    tok = _tokenizer()
    ds = datasets.Dataset.from_dict({"text": PARAGRAPHS})
    blocks = pack_blocks(ds, tok, "text", 14)
    assert len(blocks) > 0 and all(len(r) == 14 for r in blocks["input_ids"])
    stream = [i for r in blocks["input_ids"] for i in r]
    n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in PARAGRAPHS)
    assert len(stream) == n_tokens // 14 * 14  # nothing lost but the final partial block
    assert stream.count(tok.sep_token_id) >= len(stream) // n_tokens * len(PARAGRAPHS) - 1


def test_line_packing_keeps_each_text_whole_or_truncated() -> None:
    tok = _tokenizer()
    texts = ["It is a truth universally acknowledged.", "  ", "Must be in want of a wife.", PARAGRAPHS[1] * 3]
    rows = pack_blocks(datasets.Dataset.from_dict({"text": texts}), tok, "text", 12, packing="line")["input_ids"]
    expected = [tok(t, add_special_tokens=False)["input_ids"] for t in texts if t.strip()]
    assert len(rows) == 3  # the blank text is dropped
    assert rows[:2] == expected[:2] and tok.sep_token_id not in rows[0]
    assert rows[2] == expected[2][:12] and len(expected[2]) > 12


def test_line_packing_refuses_sentence_pairs() -> None:
    with pytest.raises(ValueError, match="data.sentence_pairs needs data.packing=concat"):
        TextDataConfig(packing="line", sentence_pairs=True)


def test_streaming_packing_matches_in_memory() -> None:
    tok = _tokenizer("gpt2")
    ds = datasets.Dataset.from_dict({"text": PARAGRAPHS})
    a = pack_blocks(ds, tok, "text", 10)["input_ids"]
    b = [r["input_ids"] for r in pack_blocks(ds.to_iterable_dataset(), tok, "text", 10)]
    assert a == b


def test_local_text_files_are_read_by_paragraph(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("First paragraph\nwrapped line.\n\nSecond one.\n")
    ds = load_texts(TextDataConfig(source="files", paths=[str(tmp_path / "*.txt")]))
    assert [t.strip() for t in ds["text"]] == ["First paragraph\nwrapped line.", "Second one."]


def test_csv_and_streaming_sources(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("body,other\nhello there,1\ngeneral kenobi,2\n")
    ds = load_texts(TextDataConfig(source="files", paths=[str(tmp_path / "d.csv")], text_column="body", streaming=True))
    assert isinstance(ds, datasets.IterableDataset) and [r["body"] for r in ds] == ["hello there", "general kenobi"]


def test_empty_missing_and_columnless_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="text file .*empty.txt is empty"):
        load_texts(TextDataConfig(source="files", paths=[str(tmp_path / "empty.txt")]))
    with pytest.raises(FileNotFoundError, match="no file matches .*missing"):
        load_texts(TextDataConfig(source="files", paths=[str(tmp_path / "missing*.txt")]))
    (tmp_path / "x.csv").write_text("body\nhi\n")
    with pytest.raises(KeyError, match="data.text_column: column 'text' not in files dataset .*available: body"):
        load_texts(TextDataConfig(source="files", paths=[str(tmp_path / "x.csv")]))


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "dir.txt"
    bad.mkdir()
    with pytest.raises(
        IsADirectoryError, match=r"data.paths: .*dir.txt is a folder; name the files in it \(e.g. .*dir.txt/\*.txt\)"
    ):
        load_texts(TextDataConfig(source="files", paths=[str(bad)]))


BAD_SOURCES = {  # file name, content, the sentence `mmssl pretrain` answers with instead of a traceback
    "binary": (
        "notes.txt",
        b"\x7fELF\x02\x01\x01\x00\x00\x00" * 50,
        "is a binary file, not text (a NUL byte at offset 7)",
    ),
    "latin1": (
        "book.txt",
        "Le caf\u00e9 \u00e9tait fr\u00e9quent\u00e9.\n\nUn autre paragraphe.\n".encode("latin1"),
        "is not UTF-8 text (byte 0xE9 at offset 6); convert it to UTF-8 first, e.g. iconv -f latin1 -t utf-8",
    ),
    "jsonl": (
        "rows.jsonl",
        b'{"text": "one"}\n{"text": "two"}\n{"text": three}\n',
        "line 3 is not valid JSON (Expecting value at column 10)",
    ),
    "empty": ("empty.csv", b"", "is empty"),
    "header": ("header.csv", b"text\n", "has a header but no rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_unreadable_pretraining_sources_are_one_sentence(tmp_path: Path, capsys, case: str) -> None:
    from mmssl.cli import main

    name, content, message = BAD_SOURCES[case]
    (tmp_path / name).write_bytes(content)
    assert (
        main(
            [
                "pretrain",
                "bert",
                "--output-dir",
                str(tmp_path / "run"),
                "--set",
                "data.source=files",
                "--set",
                f"data.paths=[{tmp_path / name}]",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "mmssl: error:" in line)
    assert "mmssl: error: data.paths: " in line and str(tmp_path / name) in line and message in line
    assert "Traceback" not in err


def test_a_bad_byte_past_the_first_megabyte_is_found_when_loading(tmp_path: Path) -> None:
    """Only the first megabyte is checked up front; a later bad byte is located once `datasets` fails on it."""
    path = tmp_path / "long.txt"
    path.write_bytes(b"A plain paragraph of text.\n\n" * 40_000 + "na\u00efve\n".encode("latin1"))
    offset = 28 * 40_000 + 2
    with pytest.raises(
        ValueError, match=f"data.paths: .*long.txt is not UTF-8 text \\(byte 0xEF at offset {offset:,}\\)"
    ):
        load_texts(TextDataConfig(source="files", paths=[str(path)]))


def test_utf16_and_fake_parquet_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "wide.txt").write_bytes("\ufeffSome text.\n".encode("utf-16-le"))
    with pytest.raises(ValueError, match="wide.txt is UTF-16 text; convert it to UTF-8 first, e.g. iconv -f utf-16"):
        load_texts(TextDataConfig(source="files", paths=[str(tmp_path / "wide.txt")]))
    (tmp_path / "table.parquet").write_text("text\nnot a parquet file\n")
    with pytest.raises(ValueError, match="table.parquet is not a Parquet file"):
        load_texts(TextDataConfig(source="files", paths=[str(tmp_path / "table.parquet")]))


def test_pretrain_on_a_users_gzip_free_text_folder(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with gzip.open(Path(__file__).parents[3] / "domains/text/data/austen.txt.gz", "rt") as f:
        text = f.read(200_000)
    (corpus / "book.txt").write_text(text)
    run = pretrain(
        "gpt", [*TINY, "data.source=files", f"data.paths=[{corpus}/*.txt]", "train.max_steps=3"], tmp_path / "run"
    )
    assert (run / "export" / "config.json").is_file()


def test_pretrain_line_by_line_on_a_tasks_texts(tmp_path: Path) -> None:
    run = pretrain(
        "bert",
        [
            *TINY,
            "data.source=task",
            "data.name=rotten-tomatoes",
            "data.packing=line",
            "data.max_texts=200",
            "train.max_steps=4",
        ],
        tmp_path / "run",
    )
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["packing"] == "line" and summary["blocks"] == 200  # one sample per review
    assert summary["tokens"] < 200 * summary["block_size"]  # padding is not counted
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert losses and all(math.isfinite(x) and x > 0 for x in losses)  # finite on padded batches


def test_corpus_smaller_than_a_block_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("tiny text\n\nanother\n" * 3)
    with pytest.raises(ValueError, match="less than one block"):
        pretrain(
            "bert",
            [
                *TINY,
                "data.source=files",
                f"data.paths=[{tmp_path}/t.txt]",
                "data.block_size=60",
                "data.tokenizer.vocab_size=64",
            ],
            tmp_path / "run",
        )


def test_unknown_embedded_corpus_and_missing_column() -> None:
    with pytest.raises(ValueError, match="austen"):
        load_texts(TextDataConfig(name="nope"))
    with pytest.raises(KeyError, match="data.text_column: column 'body'"):
        load_texts(TextDataConfig(text_column="body"))


def test_tokenizer_training_is_deterministic() -> None:
    """Neither ids nor the vocabulary depend on hash-map order (see canonical_ids, continuation_pieces) on real
    text. With the plain WordPiece trainer, 20 trainings on these texts gave 10 different vocabularies."""
    from domains.text.builders import load_embedded_corpus

    texts = load_embedded_corpus()["text"][:1500]
    for arch in ("bert", "gpt2"):
        outcomes = {
            train_tokenizer(iter(texts), TokenizerConfig(vocab_size=3000), arch, 64).backend_tokenizer.to_str()
            for _ in range(6)
        }
        assert len(outcomes) == 1, arch
    gpt = train_tokenizer(iter(texts), TokenizerConfig(vocab_size=3000), "gpt2", 64)
    assert gpt.convert_ids_to_tokens([0]) == ["<|endoftext|>"]
    assert _tokenizer().convert_ids_to_tokens(list(range(5))) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_wordpiece_continuation_pieces_stay_ordinary_vocabulary() -> None:
    """The ``##c`` pieces registered with the trainer to fix their ids are not added (special) tokens after it."""
    tok = _tokenizer()
    assert {t.content for t in tok.backend_tokenizer.get_added_tokens_decoder().values()} == set(BERT_SPECIALS.values())
    assert "##e" in tok.get_vocab() and set(tok.all_special_tokens) == set(BERT_SPECIALS.values())
    assert tok.tokenize("##e")[-1] == "e"  # literal text is not matched as the piece "##e"
    ids = tok("fortunes")["input_ids"]  # fortune ##s
    assert any(t.startswith("##") for t in tok.convert_ids_to_tokens(ids))
    assert tok.decode(ids, skip_special_tokens=True) == "fortunes"


def test_task_texts_add_the_training_split_only(tmp_path: Path) -> None:
    from domains.text.tasks import text_task_data
    from mmssl.tasks import TaskConfig

    corpus = load_texts(TextDataConfig(max_texts=50))
    mixed = load_texts(TextDataConfig(max_texts=50, task_texts="rotten-tomatoes"))
    split = text_task_data(TaskConfig(name="rotten-tomatoes"))
    assert mixed["text"][:50] == corpus["text"]
    assert mixed["text"][50:] == split.train["text"]  # the texts of the training split, in order
    assert not set(mixed["text"]) & set(split.test["text"])  # held-out texts never reach pretraining
    assert mixed.column_names == ["text"]  # no labels


def test_task_source_is_the_training_split_texts_alone() -> None:
    from domains.text.tasks import text_task_data
    from mmssl.tasks import TaskConfig

    ds = load_texts(TextDataConfig(source="task", name="rotten-tomatoes", text_column="body"))
    split = text_task_data(TaskConfig(name="rotten-tomatoes"))
    assert ds.column_names == ["body"] and ds["body"] == split.train["text"]
    with pytest.raises(KeyError, match="data.name: unknown task 'nope'"):
        load_texts(TextDataConfig(source="task", name="nope"))


def test_task_texts_errors() -> None:
    with pytest.raises(KeyError, match="data.task_texts: unknown task 'nope'"):
        load_texts(TextDataConfig(max_texts=5, task_texts="nope"))
    with pytest.raises(KeyError, match="unknown task 'fashion-mnist'; the text tasks: rotten-tomatoes"):
        load_texts(TextDataConfig(max_texts=5, task_texts="fashion-mnist"))  # an image task holds no texts
    with pytest.raises(ValueError, match="data.task_texts cannot be combined with data.streaming"):
        load_texts(TextDataConfig(max_texts=5, task_texts="rotten-tomatoes", streaming=True))
