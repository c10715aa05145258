"""The command line: listings, and errors that name the key (exit code 2, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mmssl.cli import main


def test_recipes_and_data_list(capsys) -> None:
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "\nbert " in out and "\ngpt " in out and "\nsimclr " in out
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("austen", "rotten-tomatoes", "gcide", "kjv", "python-docs", "fortunes"):
        assert name in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["pretrain", "bert", "--set", "train.lrr=1"], "unknown key 'train.lrr'"),
        (["pretrain", "bert", "--set", "train.batch_size=big"], "train.batch_size: expected int, got 'big'"),
        (["pretrain", "bert", "--set", "encoder"], "--set 'encoder': expected key=value"),
        (["pretrain", "nope"], "unknown recipe 'nope'"),
        (["finetune", "/nonexistent", "--task", "rotten-tomatoes"], "neither an mmssl run"),
        (["evaluate", "/nonexistent", "--task", "x", "--set", "task.nme=1"], "unknown key 'task.nme'"),
        (["data", "prepare", "imagenet"], "unknown dataset 'imagenet'"),
        (["export", "/nonexistent"], "not an mmssl run"),
    ],
)
def test_errors_name_the_problem(args: list[str], message: str, capsys) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_console_script_is_installed(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mmssl.cli", "pretrain", "bert", "--set", "train.lr=oops"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2 and "train.lr: expected float" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "value, message",
    [
        ("1" * 400, "train.lr: 1111111111"),  # an OverflowError traceback before
        ("inf", "train.lr: must be a finite number, got 'inf'"),  # ran until the NaN guard stopped it
        (".nan", "train.lr: must be a finite number, got nan"),  # caught only by torch's optimizer, without the key
    ],
)
def test_numbers_that_are_not_finite_floats_are_errors_naming_the_key(value: str, message: str, capsys) -> None:
    assert main(["pretrain", "bert", "--set", f"train.lr={value}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err) < 400


def test_huge_values_are_not_echoed_in_full(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the run directory (config.yaml) is written before the corpus is looked up
    assert (
        main(
            [
                "pretrain",
                "bert",
                "--set",
                "data.source=embedded",
                "--set",
                f"data.name={'x' * 100_000}",
                "--set",
                "train.max_steps=1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown embedded corpus 'xxxx" in err and "(100,002 characters)" in err and len(err) < 500


def test_integer_settings_must_fit_64_bits(capsys) -> None:
    assert main(["pretrain", "bert", "--set", f"train.max_steps={'9' * 30}"]) == 2
    assert "train.max_steps: 999999" in capsys.readouterr().err


def test_an_unwritable_output_dir_is_one_line(capsys) -> None:
    """/sys refuses new folders even to root (CI runs as root, so chmod cannot make a folder read-only)."""
    assert main(["pretrain", "bert", "--output-dir", "/sys/fs/mmssl-run", "--set", "train.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmssl: error: /sys/fs/mmssl-run: Operation not permitted (choose a folder you can write to")
    assert "Traceback" not in err


def test_help_and_listings_do_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom mmssl.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    for args in (["recipes"], ["data", "list"], ["--help"], ["pretrain", "--help"]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0 and "usage: mmssl" in out.stdout if "--help" in args else out.returncode == 0, (
            f"{args}: {out.stderr}"
        )


def test_data_list_has_a_header_and_marks_the_embedded_sets(capsys) -> None:
    assert main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "DOMAIN", "STATUS", "DESCRIPTION"]
    table = lines[1 : lines.index("")]
    rows = {line.split()[0]: line.split()[2] for line in table}
    assert len(rows) >= 13 and "mmssl data prepare NAME" in lines[-1]
    assert rows["austen"] == "embedded" and rows["rotten-tomatoes"] == "embedded"
    # shipped sets stay `embedded` once their first use has built them into the cache
    assert rows["fashion-mnist-small"] == "embedded" and rows["wordnet-graph"] == "embedded"
    assert rows["fashion-mnist"] in ("prepared", "not-prepared")


def test_objective_errors_keep_their_section_prefix(capsys) -> None:
    assert main(["pretrain", "bert", "--set", "objective.mask_prob=1.5"]) == 2
    assert "objective.mask_prob must be in (0, 1), got 1.5" in capsys.readouterr().err


def test_other_libraries_are_quiet_unless_verbose(tmp_path: Path) -> None:
    """The first command's output is mmssl's own lines and bar, not tokenizers' or transformers' reports."""
    import os

    from mmssl.cli import QUIET_ENV
    from tests.conftest import TINY

    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}  # main() in this process set them
    sets = [a for s in [*TINY, "train.max_steps=2", "data.max_texts=200"] for a in ("--set", s)]
    run = [sys.executable, "-m", "mmssl.cli", "pretrain", "bert", "--output-dir", str(tmp_path / "run"), *sets]
    out = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    for noise in ("Pre-processing sequences", "Compute merges", "Count pairs", "Writing model shards", "INFO "):
        assert noise not in text
    assert "training a WordPiece tokenizer" in text and "model: HFTextEncoder encoder" in text and "train:" in text
    finetune = [
        sys.executable,
        "-m",
        "mmssl.cli",
        "finetune",
        str(tmp_path / "run"),
        "--task",
        "rotten-tomatoes",
        "--set",
        "train.max_steps=1",
        "--set",
        "task.max_train_samples=64",
    ]
    quiet = subprocess.run(finetune, capture_output=True, text=True, cwd=tmp_path, env=env)
    loud = subprocess.run(
        [*finetune[:3], "-v", *finetune[3:], "--overwrite"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    report = "newly initialized"  # transformers' report of the classifier head's fresh weights
    assert report not in quiet.stdout + quiet.stderr and report in (loud.stdout + loud.stderr).replace("\n", " ")


@pytest.mark.parametrize(
    "args, refused",
    [
        (
            ["finetune", "/nonexistent", "--task", "rotten-tomatoes", "--set", "init=raw"],
            "fine-tuning needs an encoder",
        ),
        (
            ["evaluate", "/nonexistent", "--task", "rotten-tomatoes", "--protocol", "finetune", "--init", "raw"],
            "fine-tuning needs an encoder",
        ),
        (
            ["evaluate", "/nonexistent", "--task", "speech-text", "--protocol", "retrieval", "--init", "raw"],
            "--protocol retrieval needs an encoder",
        ),
    ],
)
def test_init_raw_is_refused_where_a_protocol_needs_an_encoder(args: list[str], refused: str, capsys) -> None:
    assert main(args) == 2  # refused before the path is read: it does not exist
    err = capsys.readouterr().err
    assert (
        f"mmssl: error: init=raw probes the task's raw features (pixels, MFCC statistics, ...) with --protocol "
        f"linear or knn; {refused}: use init=pretrained or init=random"
    ) in err


def _reviews(path: Path) -> Path:
    """60 short reviews, the positive ones with "lovely charming", the negative ones with "dull tedious"."""
    rows = [
        f"a {'lovely charming' if i % 2 else 'dull tedious'} film {i},{'pos' if i % 2 else 'neg'}" for i in range(60)
    ]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def test_evaluate_baseline_puts_pretrained_random_and_raw_features_side_by_side(
    tiny_bert_run: Path, tmp_path: Path, capsys
) -> None:
    import json

    from mmssl.metrics import read_metrics
    from mmssl.stats import paired_comparison

    task = ["--task", "file", "--set", f"task.path={_reviews(tmp_path / 'reviews.csv')}"]
    assert main(["evaluate", str(tiny_bert_run), "--protocol", "knn", "--set", "probe.k=5", *task, "--baseline"]) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    inits = [(r["init"], r.get("baseline")) for r in records]
    assert inits == [("pretrained", None), ("random", None), ("raw", "tf-idf")]
    assert all(r["protocol"] == "knn" and r["n_train"] == 48 and r["n_test"] == 12 for r in records)
    assert records[2]["accuracy"] == 1.0  # the class words alone separate the reviews
    assert "file test accuracy of the knn probe (12 held-out examples)" in out
    assert f"  raw tf-idf       {records[2]['accuracy']:.4f}" in out
    assert "pretrained init against random init:" in out and "pretrained init against raw tf-idf:" in out
    # every test row is right with the raw features: the gain over them is minus the rows the pretrained probe misses
    c = paired_comparison(
        [1] * round(12 * records[0]["accuracy"]) + [0] * round(12 * (1 - records[0]["accuracy"])), [1] * 12
    )
    assert f"{c['only_b']} only with the raw-feature baseline" in out and f"gain             {c['gain']:+.4f}" in out
    logged = [r for r in read_metrics(tiny_bert_run) if r.get("event") == "evaluate"][-3:]
    assert [r["init"] for r in logged] == ["pretrained", "random", "raw"]


def test_finetune_with_a_label_budget_over_seeds_compares_with_random_init_and_raw_features(
    tiny_bert_run: Path, tmp_path: Path, capsys
) -> None:
    """``finetune --set task.labels_per_class=3 --seeds 2 --baseline``: each seed fine-tunes the pretrained and
    the random-init model on the same 3 reviews of each class (its own folder), the raw features' linear probe
    on the same rows is the reference line, and the table and the logged summary cover all three."""
    import json

    from mmssl.metrics import read_metrics

    args = [
        "finetune",
        str(tiny_bert_run),
        "--task",
        "file",
        "--set",
        f"task.path={_reviews(tmp_path / 'reviews.csv')}",
        "--set",
        "task.labels_per_class=3",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.batch_size=4",
        "--seeds",
        "2",
        "--baseline",
        "--output-dir",
        str(tmp_path / "ft"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["event"], r["init"], r["seed"]) for r in records] == [
        ("evaluate", "raw", 0),
        ("evaluate", "raw", 1),
        ("finetune", "pretrained", 0),
        ("finetune", "random", 0),
        ("finetune", "pretrained", 1),
        ("finetune", "random", 1),
    ]
    assert all(r["labels_per_class"] == 3 and r["n_train"] == 6 and r["n_test"] == 12 for r in records)
    by_seed = {seed: {r["train_subset"] for r in records if r["seed"] == seed} for seed in (0, 1)}
    assert all(len(digests) == 1 for digests in by_seed.values()) and by_seed[0] != by_seed[1]
    folders = sorted(p.name for p in (tmp_path / "ft").iterdir() if p.is_dir())
    assert folders == [f"file-{init}-3-per-class-seed{s}" for init in ("pretrained", "random") for s in (0, 1)]
    assert "file test accuracy after fine-tuning, 3 labels per class (6 training rows), seeds 0-1" in out
    assert "  raw tf-idf (linear probe)  " in out and "  random init  " in out
    summary = [r for r in read_metrics(tiny_bert_run) if r.get("event") == "finetune_summary"][-1]
    assert list(summary["inits"]) == ["pretrained", "random", "raw"] and summary["seeds"] == [0, 1]
    accuracies = [r["accuracy"] for r in records if r["init"] == "random"]
    assert summary["inits"]["random"]["accuracies"] == pytest.approx(accuracies)


def test_one_seed_with_a_budget_says_the_test_over_seeds_needs_more(
    tiny_bert_run: Path, tmp_path: Path, capsys
) -> None:
    task = ["--task", "file", "--set", f"task.path={_reviews(tmp_path / 'reviews.csv')}"]
    args = ["evaluate", str(tiny_bert_run), "--protocol", "knn", "--set", "probe.k=3", *task]
    assert main([*args, "--set", "task.label_fraction=0.25", "--baseline"]) == 0
    out = capsys.readouterr().out
    assert (
        "file test accuracy of the knn probe, 25% of the labels (12 training rows), seed 0 (12 held-out examples)"
        in out
    )
    assert "over seeds: a paired test of the accuracy differences needs 2 or more seeds (--seeds K)" in out
    assert "pretrained init against raw tf-idf:" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "/nonexistent", "--task", "x", "--seeds", "0"], "--seeds 0: give 1 or more seeds"),
        (
            ["evaluate", "/nonexistent", "--task", "speech-text", "--protocol", "retrieval", "--seeds", "2"],
            "--protocol retrieval trains nothing, so task.labels_per_class, task.label_fraction and --seeds",
        ),
    ],
)
def test_seeds_and_budgets_that_do_not_apply_are_refused(args: list[str], message: str, capsys) -> None:
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"mmssl: error: {message}")
