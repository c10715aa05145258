"""The ``mmssl`` command line (see docs/getting-started.md)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mmssl.config import ConfigError, apply_overrides, from_dict, to_dict


def _finetune_config(overrides: list[str], task: str):
    from mmssl.finetune import FinetuneConfig

    raw = apply_overrides(to_dict(FinetuneConfig()), [f"task.name={task}", *overrides])
    return from_dict(FinetuneConfig, raw)


def cmd_recipes(args: argparse.Namespace) -> None:
    from mmssl.recipe import list_recipes

    for name, description in list_recipes():
        print(f"{name:<16} {description}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from mmssl.pretrain import pretrain

    run_dir = pretrain(args.recipe, args.set, args.output_dir, resume=args.resume)
    print(f"run directory: {run_dir}\nexport: {run_dir / 'export'}")


def _print_result(record: dict) -> None:
    print(json.dumps({k: v for k, v in record.items() if k != "output_dir"}))


def cmd_finetune(args: argparse.Namespace) -> None:
    from mmssl.finetune import finetune

    cfg = _finetune_config(args.set, args.task)
    inits = ["pretrained", "random"] if args.baseline else [cfg.init]
    results = []
    for init in inits:
        run_cfg = from_dict(type(cfg), {**to_dict(cfg), "init": init})
        results.append(finetune(args.run, run_cfg, args.output_dir, args.domain))
        _print_result(results[-1])
    if args.baseline:
        print(f"\n{cfg.task.name} test accuracy after fine-tuning ({results[0]['n_test']} held-out examples)")
        for r in results:
            print(f"  {r['init'] + ' init':<16} {r['accuracy']:.4f}")
        print(_gain_summary(results[0], results[1]))


def _gain_summary(pretrained: dict, random: dict) -> str:
    """The gain with its paired 95% interval and McNemar's test (both models scored on the same test rows)."""
    import numpy as np

    from mmssl.finetune import load_predictions, paired_comparison

    (pred_a, label_a), (pred_b, label_b) = (load_predictions(Path(r["output_dir"])) for r in (pretrained, random))
    if not np.array_equal(label_a, label_b):
        raise RuntimeError("the two fine-tuning runs were scored on different test rows")
    c = paired_comparison(pred_a == label_a, pred_b == label_b)
    verdict = "significant" if c["p_value"] < 0.05 else "not significant"
    return (f"  {'gain':<16} {c['gain']:+.4f}  (95% CI {c['ci95'][0]:+.4f} to {c['ci95'][1]:+.4f})\n"
            f"  {'McNemar p':<16} {c['p_value']:.3f}   {verdict} at 0.05: {c['only_a']} rows right only with the "
            f"pretrained init, {c['only_b']} only with the random one")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mmssl.finetune import finetune, knn_probe, linear_probe

    cfg = _finetune_config(args.set, args.task)
    if args.protocol == "finetune":
        _print_result(finetune(args.run, cfg, None, args.domain))
    elif args.protocol == "retrieval":  # paired (two-tower) exports: recall@k both ways
        from mmssl.evaluation import retrieval_probe

        _print_result(retrieval_probe(args.run, cfg, args.domain))
    else:
        _print_result({"linear": linear_probe, "knn": knn_probe}[args.protocol](args.run, cfg, args.domain))


def cmd_export(args: argparse.Namespace) -> None:
    from mmssl.export import export_run

    print(export_run(args.run, args.to))


def cmd_push(args: argparse.Namespace) -> None:
    from mmssl.hub import push

    result = push(args.run, args.repo_id, private=args.private, dry_run=args.dry_run)
    if args.dry_run:
        total = sum(size for _, size in result)
        print(f"dry run: would create {args.repo_id} ({'private' if args.private else 'public'}) and upload:")
        for name, size in result:
            print(f"  {size:>12,d}  {name}")
        print(f"  {total:>12,d}  bytes in {len(result)} files")
    else:
        print(f"pushed: {result}")


def cmd_data(args: argparse.Namespace) -> None:
    from mmssl.datasets import is_prepared, prepare
    from mmssl.registry import DATASETS

    if args.action == "list":
        for name in DATASETS.names():
            b = DATASETS.get(name)
            status = "prepared" if is_prepared(name) else "-"
            print(f"{name:<18} {b.domain:<6} {status:<9} {b.description}")
        return
    if not args.name:
        raise ConfigError("mmssl data prepare NAME: NAME is missing (see mmssl data list)")
    print(prepare(args.name, force=args.force))  # builds only when missing, or with --force


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmssl", description="Self-supervised pretraining for text, images, audio and graphs.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("recipes", help="list recipes").set_defaults(func=cmd_recipes)

    def with_set(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (repeatable)")
        return sp

    sp = with_set(sub.add_parser("pretrain", help="pretrain a recipe"))
    sp.add_argument("recipe", help="recipe name (see `mmssl recipes`) or YAML file")
    sp.add_argument("--output-dir", type=Path, default=None)
    sp.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output-dir")
    sp.set_defaults(func=cmd_pretrain)

    for name, func, helptext in (("finetune", cmd_finetune, "fine-tune an export on a labelled task"),
                                 ("evaluate", cmd_evaluate, "evaluate frozen features or fine-tuning")):
        sp = with_set(sub.add_parser(name, help=helptext))
        sp.add_argument("run", type=Path, help="a run directory or an export folder")
        sp.add_argument("--task", required=True, help="registered task name, or `file` / `hub` with --set task.path=...")
        sp.add_argument("--domain", default=None, help="domain of an export made outside mmssl (e.g. text)")
        if name == "finetune":
            sp.add_argument("--output-dir", type=Path, default=None)
            sp.add_argument("--baseline", action="store_true", help="also fine-tune a random-init copy and compare")
        else:
            sp.add_argument("--protocol", choices=["linear", "knn", "finetune", "retrieval"], default="linear")
        sp.set_defaults(func=func)

    sp = sub.add_parser("export", help="export a run's encoder in Hugging Face format")
    sp.add_argument("run", type=Path)
    sp.add_argument("--to", type=Path, default=None, help="destination (default RUN/export)")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("push", help="upload an export to the Hugging Face Hub")
    sp.add_argument("run", type=Path, help="a run directory or an export folder")
    sp.add_argument("--repo-id", required=True)
    sp.add_argument("--private", action="store_true")
    sp.add_argument("--dry-run", action="store_true", help="list what would be uploaded; send nothing")
    sp.set_defaults(func=cmd_push)

    sp = sub.add_parser("data", help="offline dataset builders")
    sp.add_argument("action", choices=["list", "prepare"])
    sp.add_argument("name", nargs="?")
    sp.add_argument("--force", action="store_true", help="rebuild even if prepared")
    sp.set_defaults(func=cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    # save_state keeps one name per tied tensor; mmssl.export.load_weights re-ties them on load
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"mmssl: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
