"""Export the encoder of a run in its library's native format (transformers ``save_pretrained``).

An export folder holds the backbone weights (safetensors) and config, the processor
(tokenizer / feature extractor), a model card ``README.md`` and ``mmssl.json`` (domain,
recipe and step, so ``mmssl finetune`` knows how to read it). It loads with the Auto
classes and pipelines, without mmssl.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCardData

from mmssl.checkpoint import CONFIG_FILE, EXPORT_DIR, SUMMARY_FILE, latest_checkpoint
from mmssl.config import to_dict
from mmssl.metrics import last_training_record, read_metrics
from mmssl.model import build_model, load_run_recipe, load_weights
from mmssl.objectives.base import SSLModel
from mmssl.recipe import Recipe
from mmssl.registry import DOMAINS

META_FILE = "mmssl.json"


def _public_text(text: str) -> str:
    """``text`` with every local path in it cut to its file name (comma-separated lists piece by piece).

    A path is local when it is absolute, starts at the home folder (``~``) or climbs out of the
    working folder (``..``): an export is published, and such paths name the machine's users and
    folders. Relative paths inside a project and Hub names (``org/name``) are kept.
    """

    def public(piece: str) -> str:
        stripped = piece.strip()
        if os.path.isabs(stripped) or stripped.startswith("~") or ".." in Path(stripped).parts:
            return piece.replace(stripped, Path(stripped).name or stripped)
        return piece

    return ",".join(public(p) for p in text.split(","))


def public_values(obj: Any) -> Any:
    """A recipe or summary (nested dicts/lists) with local paths reduced by :func:`_public_text`."""
    if isinstance(obj, dict):
        return {k: public_values(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [public_values(v) for v in obj]
    return _public_text(obj) if isinstance(obj, str) else obj


def _model_card(
    recipe: Recipe, run_dir: Path | None, step: int | None, summary: dict[str, Any], pipeline_tag: str | None
) -> str:
    meta = ModelCardData(
        library_name="transformers",
        tags=["mmssl", "self-supervised", recipe.name, recipe.domain],
        pipeline_tag=pipeline_tag,
    )
    last = last_training_record(run_dir) if run_dir else None
    results = [r for r in read_metrics(run_dir)] if run_dir else []
    results = [r for r in results if r.get("event") in ("finetune", "evaluate")]
    lines = [f"---\n{meta.to_yaml()}\n---", f"# {recipe.name} encoder pretrained with mmssl", ""]
    if recipe.description:
        lines += [recipe.description.strip(), ""]
    lines += [
        "## Pretraining",
        "",
        f"- recipe: `{recipe.name}` (domain `{recipe.domain}`, objective `{recipe.objective.name}`)",
        f"- optimizer steps: {step}",
    ]
    lines += [f"- {k}: {v}" for k, v in public_values(summary).items()]
    if last:
        lines.append(f"- final training loss: {last['loss']:.4f} (step {last['step']})")
    if results:
        lines += ["", "## Downstream results", "", "| protocol | task | init | result |", "|---|---|---|---|"]
        for r in results:
            lines.append(
                f"| {r.get('protocol', r['event'])} | {r.get('task')} | {r.get('init', 'pretrained')} | {_result_text(r)} |"
            )
    resolved = yaml.safe_dump(public_values(to_dict(recipe)), sort_keys=False).strip()
    lines += ["", "## Recipe (fully resolved; local paths cut to file names)", "", "```yaml", resolved, "```", ""]
    return "\n".join(lines)


def _result_text(record: dict[str, Any]) -> str:
    """A metrics.jsonl result as one table cell: its accuracy, or its recall@k figures (retrieval)."""
    if "accuracy" in record:
        return f"accuracy {record['accuracy']:.4f}"
    recalls = [
        f"{k.replace('_', ' ')} {v:.4f}" for k, v in record.items() if "recall@" in k and not k.startswith("chance")
    ]
    return ", ".join(recalls) or "-"


def write_export(
    model: SSLModel,
    processor: Any,
    recipe: Recipe,
    out_dir: Path,
    run_dir: Path | None,
    step: int | None,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write the encoder, processor, model card and ``mmssl.json`` to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.encoder.export(out_dir)
    if processor is not None:
        processor.save_pretrained(str(out_dir))
    summary = dict(summary or {})
    pipeline_tag = getattr(model.encoder, "pipeline_tag", None)
    (out_dir / "README.md").write_text(_model_card(recipe, run_dir, step, summary, pipeline_tag))
    meta = {
        "domain": recipe.domain,
        "recipe": recipe.name,
        "objective": recipe.objective.name,
        "step": step,
        **public_values(summary),
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def export_run(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Export the latest checkpoint of ``run_dir`` (default destination ``run_dir/export``)."""
    run_dir = Path(run_dir)
    recipe = load_run_recipe(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint to export (checkpoints/step-*/COMPLETE)")
    processor = DOMAINS.get(recipe.domain).load_processor(run_dir)
    model = build_model(recipe, processor)
    load_weights(model, ckpt / "model.safetensors")
    step = int((ckpt / "COMPLETE").read_text())
    summary = json.loads((run_dir / SUMMARY_FILE).read_text()) if (run_dir / SUMMARY_FILE).exists() else {}
    return write_export(model, processor, recipe, out_dir or run_dir / EXPORT_DIR, run_dir, step, summary)


def resolve_export(path: Path) -> tuple[Path, Path | None]:
    """``RUN_OR_EXPORT`` -> ``(export_dir, run_dir or None)``; a run without an export is exported first."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        export = path / EXPORT_DIR
        if not (export / META_FILE).is_file():
            export_run(path)
        return export, path
    if (path / "config.json").is_file() or (
        path / META_FILE
    ).is_file():  # multi-tower exports keep config.json per tower
        return path, None
    raise FileNotFoundError(
        f"{path} is neither an mmssl run ({CONFIG_FILE}) nor an exported model (config.json or {META_FILE})"
    )


def export_meta(export_dir: Path) -> dict[str, Any]:
    path = Path(export_dir) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
