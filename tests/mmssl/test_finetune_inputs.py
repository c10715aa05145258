"""`mmssl finetune` / `mmssl evaluate` on what users give them: output folders that hold other files, exports
of another domain, and fine-tuned exports used without mmssl (the text-classification pipeline)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mmssl.cli import main
from mmssl.metrics import read_metrics


@pytest.fixture(scope="module")
def polarity_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 reviews: "great wonderful" in the positive ones, "awful terrible" in the negative ones."""
    rng = random.Random(0)
    rows = ["review,sentiment"]
    for i in range(200):
        positive = i % 2 == 0
        filler = " ".join(rng.sample(["the", "film", "was", "quite", "and", "story"], 3))
        rows.append(
            f"{filler} {'great wonderful' if positive else 'awful terrible'},{'positive' if positive else 'negative'}"
        )
    path = tmp_path_factory.mktemp("polarity") / "polarity.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _finetune(run: Path, csv: Path, *extra: str, steps: int = 2) -> list[str]:
    return [
        "finetune",
        str(run),
        "--task",
        "file",
        "--set",
        f"task.path={csv}",
        "--set",
        "task.input_column=review",
        "--set",
        "task.label_column=sentiment",
        "--set",
        f"train.max_steps={steps}",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.warmup_steps=1",
        *extra,
    ]


def _last_result(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def test_the_fine_tuned_export_answers_the_pipeline_with_named_labels(
    tiny_bert_run: Path, polarity_csv: Path, tmp_path: Path, capsys
) -> None:
    from transformers import pipeline

    assert (
        main(_finetune(tiny_bert_run, polarity_csv, "--set", "train.lr=3e-3", "--output-dir", str(tmp_path), steps=40))
        == 0
    )
    export = tmp_path / "file-pretrained" / "export"
    assert _last_result(capsys.readouterr().out)["accuracy"] == 1.0
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"} <= {
        p.name for p in export.iterdir()
    }
    classify = pipeline("text-classification", model=str(export))
    assert classify.tokenizer.unk_token_id not in classify.tokenizer("great wonderful awful terrible")["input_ids"]
    good, bad = classify(["the film was great wonderful", "the story was awful terrible"])
    assert (good["label"], bad["label"]) == ("positive", "negative")
    assert classify.model.config.label2id == {"negative": 0, "positive": 1}


def test_output_dir_keeps_what_mmssl_did_not_write(
    tiny_bert_run: Path, polarity_csv: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "mine"
    (out / "file-pretrained").mkdir(parents=True)
    (out / "keep.txt").write_text("the user's")
    (out / "file-pretrained" / "notes.txt").write_text("the user's notes")
    for extra in ([], ["--overwrite"]):  # a folder that holds no fine-tune is never cleared, not even with --overwrite
        assert main(_finetune(tiny_bert_run, polarity_csv, "--output-dir", str(out), *extra)) == 2
        err = capsys.readouterr().err
        assert f"mmssl: error: {out / 'file-pretrained'} is not empty (notes.txt) and holds no fine-tune" in err
        assert (out / "file-pretrained" / "notes.txt").read_text() == "the user's notes"
    (out / "file-pretrained" / "notes.txt").unlink()

    assert main(_finetune(tiny_bert_run, polarity_csv, "--output-dir", str(out))) == 0
    capsys.readouterr()
    assert (out / "keep.txt").read_text() == "the user's"
    marker = json.loads((out / "file-pretrained" / "finetune.json").read_text())
    assert list(marker)[:3] == ["task", "init", "domain"]  # what it holds first, then the result
    assert (marker["task"], marker["init"], marker["domain"]) == ("file", "pretrained", "text")
    # 2 steps of 9 an epoch (144 training rows in batches of 16): the run ends inside the first epoch, and is scored
    assert (marker["steps"], marker["epochs"], marker["best_epoch"], marker["n_validation"]) == (2, 0.22, 0.22, 16)

    assert main(_finetune(tiny_bert_run, polarity_csv, "--output-dir", str(out))) == 2  # a rerun there asks first
    assert (
        "holds a previous fine-tune of 'file' (pretrained init): pass --overwrite to replace it"
        in capsys.readouterr().err
    )

    (out / "file-pretrained" / "notes.txt").write_text("written later")
    (out / "file-pretrained" / "export" / "config.json").write_text("{}")
    assert main(_finetune(tiny_bert_run, polarity_csv, "--output-dir", str(out), "--overwrite")) == 0
    assert (out / "file-pretrained" / "notes.txt").read_text() == "written later"  # only the fine-tune's own files go
    assert json.loads((out / "file-pretrained" / "export" / "config.json").read_text())["id2label"]
    assert (out / "keep.txt").read_text() == "the user's"


def test_output_dir_dot_deletes_nothing(
    tiny_bert_run: Path, polarity_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work.txt").write_text("draft")
    (tmp_path / "data").mkdir()
    assert main(_finetune(tiny_bert_run, polarity_csv, "--output-dir", ".")) == 0
    assert (tmp_path / "work.txt").read_text() == "draft" and (tmp_path / "data").is_dir()
    assert (tmp_path / "file-pretrained" / "export" / "config.json").is_file()


def test_output_dir_that_is_a_file_is_an_error(tiny_bert_run: Path, polarity_csv: Path, tmp_path: Path, capsys) -> None:
    taken = tmp_path / "results.txt"
    taken.write_text("keep me")
    assert main(_finetune(tiny_bert_run, polarity_csv, "--output-dir", str(taken))) == 2
    assert f"mmssl: error: {taken} is a file, not a folder: choose another --output-dir" in capsys.readouterr().err
    assert taken.read_text() == "keep me"


def test_baseline_runs_get_their_own_folders_and_the_default_folder_is_reused(
    tiny_bert_run: Path, polarity_csv: Path, tmp_path: Path, capsys
) -> None:
    assert main(_finetune(tiny_bert_run, polarity_csv, "--output-dir", str(tmp_path), "--baseline")) == 0
    assert "McNemar p" in capsys.readouterr().out
    for init in ("pretrained", "random"):
        assert json.loads((tmp_path / f"file-{init}" / "finetune.json").read_text())["init"] == init
        assert (tmp_path / f"file-{init}" / "test_predictions.npz").is_file()
    # the default folder RUN/finetune/TASK-INIT holds only mmssl's fine-tune: a rerun replaces it, as it always did
    for _ in range(2):
        assert main(_finetune(tiny_bert_run, polarity_csv, "--set", "init=random")) == 0
    records = [r for r in read_metrics(tiny_bert_run) if r.get("event") == "finetune"][-2:]
    assert [r["output_dir"] for r in records] == [str(tiny_bert_run / "finetune" / "file-random")] * 2


def _fake_export(root: Path, domain: str) -> Path:
    """An export folder as far as the domain check reads it: mmssl.json naming the domain."""
    root.mkdir(parents=True)
    (root / "mmssl.json").write_text(json.dumps({"domain": domain}))
    (root / "config.json").write_text("{}")
    return root


def test_a_task_of_another_domain_names_both_domains(
    tiny_bert_run: Path, polarity_csv: Path, tmp_path: Path, capsys
) -> None:
    image, audio = _fake_export(tmp_path / "image", "image"), _fake_export(tmp_path / "audio", "audio")
    assert main(["finetune", str(image), "--task", "rotten-tomatoes"]) == 2
    from mmssl.registry import DOMAINS

    image_tasks = ", ".join(DOMAINS.get("image").task_names())  # fashion-mnist, ..., hub
    assert (
        f"mmssl: error: {image} is an export of the image domain and task 'rotten-tomatoes' belongs to the text "
        f"domain; the image domain's tasks: {image_tasks}"
    ) in capsys.readouterr().err
    assert main(["evaluate", str(audio), "--task", "file", "--set", f"task.path={polarity_csv}"]) == 2
    assert (
        "is an export of the audio domain and task 'file' belongs to the text domain; the audio domain's tasks: "
        "kws, hub, folder"
    ) in capsys.readouterr().err
    for command in (["finetune"], ["evaluate", "--protocol", "knn"]):
        assert main([*command, str(tiny_bert_run), "--task", "fashion-mnist"]) == 2
        assert (
            "export of the text domain and task 'fashion-mnist' belongs to the image domain; the text domain's "
            "tasks: rotten-tomatoes, file, hub"
        ) in capsys.readouterr().err
    assert (
        not (image.parent / "finetune").exists()
        and not (tiny_bert_run / "finetune" / "fashion-mnist-pretrained").exists()
    )


def test_a_task_belongs_to_the_domain_it_was_registered_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from mmssl.registry import DOMAINS, TASKS, TaskSpec

    loaded = []
    monkeypatch.setitem(TASKS._items, "toy-graphs", TaskSpec(lambda: loaded.append(1), domain="graph"))
    graph_tasks = DOMAINS.get("graph").task_names()
    assert {"karate-club", "solubility", "toy-graphs", "wordnet-graph"} <= set(graph_tasks)
    assert list(graph_tasks) == sorted(graph_tasks)
    assert DOMAINS.get("text").task_names() == ("rotten-tomatoes", "file", "hub")  # registered ones, then the user's
    text = _fake_export(tmp_path / "text", "text")
    assert main(["evaluate", str(text), "--task", "toy-graphs"]) == 2
    assert (
        f"mmssl: error: {text} is an export of the text domain and task 'toy-graphs' belongs to the graph domain; "
        "the text domain's tasks: rotten-tomatoes, file, hub"
    ) in capsys.readouterr().err
    assert loaded == []  # refused before anything was loaded


def test_linear_probe_shows_progress_and_the_fit(tiny_bert_run: Path, polarity_csv: Path, capsys) -> None:
    assert (
        main(
            [
                "evaluate",
                str(tiny_bert_run),
                "--protocol",
                "linear",
                "--task",
                "file",
                "--set",
                f"task.path={polarity_csv}",
                "--set",
                "task.input_column=review",
                "--set",
                "task.label_column=sentiment",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert err.count("extract features") >= 2  # one bar for the training rows, one for the test rows
    assert "fitting the linear probe: logistic regression on 160 x 32 features" in err
    assert "linear probe fitted in" in err and "test accuracy" in err
