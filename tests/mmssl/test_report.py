"""``mmssl report``: the figures of a tiny run are written as real PNG files, report.md embeds each one, absent
metrics are skipped with a note, the t-SNE feature map runs, and bad input is a one-line error."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mmssl
from mmssl.cli import main
from mmssl.feature_map import map_rows
from mmssl.metrics import append_metrics
from mmssl.report import default_task, read_run, write_report
from mmssl.report_figures import plot_monitors

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVERY_FIGURE = ("loss", "lr", "grad_norm", "throughput", "monitors", "finetune", "results", "feature_map")


def _reviews(path: Path) -> Path:
    """150 short reviews in three classes, each named by its own words (a task that loads in a blink)."""
    words = {"pos": "lovely charming", "neg": "dull tedious", "mixed": "uneven but brave"}
    labels = list(words)
    rows = [f"a {words[labels[i % 3]]} film {i},{labels[i % 3]}" for i in range(150)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def run(tiny_bert_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny BERT run (its export, no checkpoints) with result records as the probes and fine-tunes
    write them: a kNN probe, three seeds of a label-budget probe and their summary, a raw-feature baseline, and a
    fine-tune folder with its training and validation lines."""
    run_dir = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_bert_run, run_dir, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "report"))
    common = {"event": "evaluate", "task": "rotten-tomatoes", "n_train": 10201, "n_test": 2551}
    append_metrics(run_dir, {**common, "protocol": "knn", "init": "pretrained", "accuracy": 0.54, "k": 5, "seed": 0})
    for seed, accuracy in ((0, 0.2), (0, 0.61), (1, 0.64), (2, 0.58)):  # the first seed 0 is replaced by its rerun
        budget = {"labels_per_class": 10, "seed": seed, "train_split_rows": 10201, "train_subset": f"{seed:012d}"}
        append_metrics(run_dir, {**common, "protocol": "linear", "init": "pretrained", "accuracy": accuracy, **budget})
    raw = {"protocol": "linear", "init": "raw", "baseline": "tf-idf", "accuracy": 0.55, "seed": 0}
    append_metrics(run_dir, {**common, **raw})
    folder = run_dir / "finetune" / "rotten-tomatoes-pretrained"
    folder.mkdir(parents=True)
    (folder / "finetune.json").write_text(
        json.dumps({"task": "rotten-tomatoes", "init": "pretrained", "domain": "text"})
    )
    for step in range(1, 9):  # as the Trainer logs them, the validation slice's scores at each epoch's end
        epoch_end = {"val_accuracy": 0.5 + step / 40, "val_loss": 0.7 / step} if step % 4 == 0 else {}
        append_metrics(folder, {"step": step, "epoch": step // 4, "loss": 0.7 / step**0.3, "lr": 3e-4, **epoch_end})
    finetuned = {"event": "finetune", "task": "rotten-tomatoes", "init": "pretrained", "accuracy": 0.7, "seed": 0}
    append_metrics(run_dir, {**finetuned, "n_test": 2551, "output_dir": str(folder)})
    summary = {"event": "evaluate_summary", "protocol": "linear", "task": "rotten-tomatoes", "labels_per_class": 10}
    append_metrics(run_dir, {**summary, "seeds": [0, 1, 2], "inits": {"pretrained": {"mean": 0.61}}})  # restates
    return run_dir


@pytest.fixture(scope="module")
def report(run: Path) -> Path:
    """The report with the feature map of a small CSV task (``--task file --set task.path=...``)."""
    task = _reviews(run.parent / "reviews.csv")
    return write_report(run, "file", [f"task.path={task}"], max_points=24)


def _figures(text: str) -> list[str]:
    return re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)


def test_every_figure_is_a_png_that_report_md_embeds(report: Path) -> None:
    text = report.read_text()
    for name in EVERY_FIGURE:
        png = report.parent / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE, name
        assert png.stat().st_size > 5_000, f"{name}.png is {png.stat().st_size} bytes"
    assert sorted(_figures(text)) == sorted(p.name for p in report.parent.glob("*.png"))
    assert "Skipped" not in text


def test_report_md_has_the_facts_and_the_results_table(report: Path, run: Path) -> None:
    text = report.read_text()
    assert text.startswith("# Run report: bert\n")
    for fact in ("| recipe | bert: BERT masked", "| domain | text |", "| objective | mlm |", "| steps | 12 of 12"):
        assert fact in text
    assert re.search(r"\| final loss \| \d", text) and f"`{run / 'export'}`" in text
    assert re.search(r"\| encoder \| bert, [\d,]+ weights in the export \|", text)
    rows = [line for line in text.splitlines() if line.startswith("| rotten-tomatoes |")]
    assert len(rows) == 4  # knn, linear at 10 per class over 3 seeds, raw tf-idf, the fine-tune
    budget = next(r for r in rows if "10 per class" in r)
    seeds = np.array([0.61, 0.64, 0.58])  # seed 0's rerun replaced its first record
    assert f"| {seeds.mean():.4f} | {seeds.std(ddof=1):.4f} | 3 |" in budget
    assert any("| raw tf-idf |" in r for r in rows) and any("| finetune |" in r for r in rows)


def test_feature_map_documents_its_method(report: Path) -> None:
    text = report.read_text()
    assert "PCA" in text and "t-SNE (scikit-learn `TSNE`, perplexity 7.67" in text and "3 classes" in text
    assert "stratified sample of the task's test rows (seed 0)" in text


def test_missing_metrics_are_skipped_with_a_note(run: Path, tmp_path: Path) -> None:
    shutil.copy(run / "config.yaml", tmp_path / "config.yaml")
    lines = [json.dumps({"step": s, "epoch": 0, "loss": 5.0 - s / 10}) for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join([*lines, '{"step": 6, "lo']) + "\n")  # killed mid-write
    text = write_report(tmp_path, features=False).read_text()
    assert [p.name for p in (tmp_path / "report").glob("*.png")] == ["loss.png"] and _figures(text) == ["loss.png"]
    for note in ("no `lr` in metrics.jsonl", "no `grad_norm` in metrics.jsonl", "no `samples_per_s` in metrics.jsonl"):
        assert f"*Skipped: {note}*" in text
    assert "*Skipped: no monitor" in text and "*Skipped: no evaluate or fine-tune result" in text
    assert "*Skipped: --no-features was given*" in text and "No evaluate or fine-tune results yet" in text
    assert "1 line(s) of metrics.jsonl were not JSON records" in text and "| steps | 5 of 12" in text


def test_results_keep_the_last_record_of_each_setting_and_seed(run: Path) -> None:
    results = read_run(run).results
    budget = [r for r in results if r.get("labels_per_class") == 10]
    assert sorted((r["seed"], r["accuracy"]) for r in budget) == [(0, 0.61), (1, 0.64), (2, 0.58)]


def test_default_task_of_a_run() -> None:
    assert default_task({"domain": "text", "data": {"name": "austen"}}) == "rotten-tomatoes"  # the domain's task
    assert default_task({"domain": "image", "monitor": {"task": "fashion-mnist"}}) == "fashion-mnist"
    assert default_task({"domain": "graph", "data": {"name": "solubility"}}) == "solubility"  # its data set
    assert default_task({"domain": "no-such-domain"}) is None


def test_map_rows_are_a_stratified_seeded_sample() -> None:
    labels = np.array([0] * 900 + [1] * 100)
    rows = map_rows(labels, 200)
    assert np.bincount(labels[rows]).tolist() == [180, 20] and np.array_equal(rows, np.unique(rows))
    assert np.array_equal(rows, map_rows(labels, 200)) and not np.array_equal(rows, map_rows(labels, 200, seed=1))
    assert np.array_equal(map_rows(labels, 5000), np.arange(1000))


def test_cli_report_prints_its_path_and_replaces_an_earlier_report(report: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "run"
    shutil.copytree(report.parent.parent, copy, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    assert main(["report", str(copy), "--no-features"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {copy / 'report' / 'report.md'}"
    assert not (copy / "report" / "feature_map.png").exists()  # the earlier report's map is not left behind
    assert "*Skipped: --no-features was given*" in (copy / "report" / "report.md").read_text()


@pytest.mark.parametrize(
    "where, extra, message",
    [
        ("missing", [], "is not a folder: pass a run directory"),
        ("file", [], "is not a folder: pass a run directory"),
        ("empty", [], "is not an mmssl run: it holds neither config.yaml"),
        ("run", ["--max-points", "3"], "--max-points must be at least 10 for a t-SNE map (got 3)"),
        ("run", ["--task", "imdbb"], "unknown task 'imdbb'; the text domain's tasks: rotten-tomatoes"),
        ("run", ["--set", "task.nme=1"], "unknown key 'task.nme'"),
    ],
)
def test_bad_input_is_one_line(where: str, extra: list[str], message: str, run: Path, tmp_path: Path, capsys) -> None:
    paths = {"missing": tmp_path / "nope", "file": tmp_path / "f.txt", "empty": tmp_path, "run": run}
    (tmp_path / "f.txt").write_text("x")
    assert main(["report", str(paths[where]), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmssl: error: ") and message in err and err.count("\n") == 1


def test_monitors_figure_draws_a_sparse_monitor_beside_the_diagnostics(tmp_path: Path) -> None:
    records = [{"step": s, "loss": 5 - s / 10, "mlm_accuracy": s / 100} for s in range(1, 7)]
    records = [{**r, "knn_accuracy": 0.3 + r["step"] / 100} if r["step"] % 3 == 0 else r for r in records]
    section = plot_monitors(records, tmp_path)
    assert section.file == "monitors.png" and (tmp_path / "monitors.png").read_bytes()[:8] == PNG_SIGNATURE
    assert section.text.startswith("Drawn: knn_accuracy, mlm_accuracy.")


def test_help_imports_neither_torch_nor_matplotlib(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom mmssl.cli import main\ntry:\n    main(['report', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, 'imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "usage: mmssl report" in out.stdout, out.stderr


@pytest.mark.parametrize("module", ["report", "report_figures", "feature_map"])
def test_matplotlib_and_sklearn_are_imported_only_when_a_figure_is_drawn(module: str) -> None:
    """``import mmssl.report`` needs neither: they are imported inside the functions that draw."""
    tree = ast.parse((Path(mmssl.__file__).parent / f"{module}.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in ("matplotlib", "sklearn")]
