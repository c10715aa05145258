"""The ``mmssl`` command line (see docs/getting-started.md)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mmssl.config import ConfigError, MmsslError, apply_overrides, from_dict, to_dict


def _finetune_config(overrides: list[str], task: str, init: str | None = None):
    """The ``FinetuneConfig`` of ``--task``, the ``--set`` overrides and ``--init`` (it wins over ``--set init=``)."""
    from mmssl.tasks import FinetuneConfig

    init_override = [f"init={init}"] if init else []
    raw = apply_overrides(to_dict(FinetuneConfig()), [f"task.name={task}", *overrides, *init_override])
    return from_dict(FinetuneConfig, raw)


def _with_init(cfg: Any, init: str) -> Any:
    return from_dict(type(cfg), {**to_dict(cfg), "init": init})


def cmd_recipes(args: argparse.Namespace) -> None:
    from mmssl.recipe import list_recipes

    for name, description in list_recipes():
        print(f"{name:<16} {description}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from mmssl.pretrain import pretrain

    run_dir = pretrain(args.recipe, args.set, args.output_dir, resume=args.resume, overwrite=args.overwrite)
    print(f"run directory: {run_dir}\nexport: {run_dir / 'export'}")


def _print_result(record: dict) -> None:
    print(json.dumps({k: v for k, v in record.items() if k != "output_dir"}))


def cmd_finetune(args: argparse.Namespace) -> None:
    from mmssl.tasks import check_init

    cfg = _finetune_config(args.set, args.task)
    check_init(cfg.init, "finetune")
    _finetunes(args, cfg, args.output_dir, args.overwrite)


def _finetunes(args: argparse.Namespace, cfg: Any, output_dir: Path | None, overwrite: bool) -> None:
    """Fine-tune ``cfg.init``, or with ``--baseline`` the pretrained and a random-init copy, and compare them."""
    from mmssl.finetune import finetune

    inits = ["pretrained", "random"] if args.baseline else [cfg.init]
    results = []
    for init in inits:
        results.append(finetune(args.run, _with_init(cfg, init), output_dir, args.domain, overwrite=overwrite))
        _print_result(results[-1])
        print(f"fine-tuned model: {Path(results[-1]['output_dir']) / 'export'}")
    if args.baseline:
        print(f"\n{cfg.task.name} test accuracy after fine-tuning ({results[0]['n_test']} held-out examples)")
        for r in results:
            print(f"  {r['init'] + ' init':<16} {r['accuracy']:.4f}")
        print(_gain_summary(results[0], results[1]))


def _gain_summary(pretrained: dict, random: dict) -> str:
    """The gain with its paired 95% interval and McNemar's test (both models scored on the same test rows)."""
    import numpy as np

    from mmssl.finetune import load_predictions

    (pred_a, label_a), (pred_b, label_b) = (load_predictions(Path(r["output_dir"])) for r in (pretrained, random))
    if not np.array_equal(label_a, label_b):
        raise RuntimeError("the two fine-tuning runs were scored on different test rows")
    return _paired_lines(pred_a == label_a, pred_b == label_b, "the random one")


def _paired_lines(correct_a: Any, correct_b: Any, other: str) -> str:
    """The pretrained init's gain over ``other`` from per-row 0/1 outcomes on the same test rows: the gain,
    its paired 95% interval and McNemar's exact test (:func:`mmssl.finetune.paired_comparison`)."""
    from mmssl.finetune import paired_comparison

    c = paired_comparison(correct_a, correct_b)
    verdict = "significant" if c["p_value"] < 0.05 else "not significant"
    return (
        f"  {'gain':<16} {c['gain']:+.4f}  (95% CI {c['ci95'][0]:+.4f} to {c['ci95'][1]:+.4f})\n"
        f"  {'McNemar p':<16} {c['p_value']:.3f}   {verdict} at 0.05: {c['only_a']} rows right only with the "
        f"pretrained init, {c['only_b']} only with {other}"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mmssl.tasks import check_init

    cfg = _finetune_config(args.set, args.task, args.init)
    check_init(cfg.init, args.protocol)
    if args.protocol in ("linear", "knn"):
        _probes(args, cfg)
    elif args.protocol == "finetune":
        _finetunes(args, cfg, None, False)
    else:  # retrieval: paired (two-tower) exports, recall@k both ways
        from mmssl.probes import retrieval_probe

        for init in ("pretrained", "random") if args.baseline else (cfg.init,):
            _print_result(retrieval_probe(args.run, _with_init(cfg, init), domain=args.domain))


def _probes(args: argparse.Namespace, cfg: Any) -> None:
    """``--protocol linear|knn`` with the features of ``cfg.init``, or with ``--baseline`` those of the pretrained
    encoder, the random-init one and the domain's raw features side by side, each compared with the pretrained."""
    from mmssl.probes import run_probe

    results = []
    for init in ("pretrained", "random", "raw") if args.baseline else (cfg.init,):
        results.append(run_probe(args.protocol, args.run, _with_init(cfg, init), domain=args.domain))
        _print_result(results[-1].record)
    if not args.baseline:
        return
    if any(not r.labels.equal(results[0].labels) for r in results):
        raise RuntimeError("the probes were scored on different test rows")
    names = [
        f"raw {r.record['baseline']}" if r.record["init"] == "raw" else f"{r.record['init']} init" for r in results
    ]
    width = max(16, *map(len, names))
    print(f"\n{cfg.task.name} test accuracy of the {args.protocol} probe ({len(results[0].labels)} held-out examples)")
    for name, r in zip(names, results):
        print(f"  {name:<{width}} {r.record['accuracy']:.4f}")
    correct = [(r.predictions == r.labels).numpy() for r in results]
    for name, other, outcome in zip(names[1:], ("the random one", "the raw-feature baseline"), correct[1:]):
        print(f"pretrained init against {name}:\n{_paired_lines(correct[0], outcome, other)}")


def cmd_export(args: argparse.Namespace) -> None:
    from mmssl.export import export_run

    print(export_run(args.run, args.to))


def cmd_push(args: argparse.Namespace) -> None:
    from mmssl.hub import push

    result = push(args.run, args.repo_id, private=args.private, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"pushed: {result}")
        return
    total = sum(size for _, size in result.files)
    print(
        f"dry run: would create {args.repo_id} ({'private' if args.private else 'public'}) and upload {result.folder}:"
    )
    for name, size in result.files:
        print(f"  {size:>12,d}  {name}")
    print(f"  {total:>12,d}  bytes in {len(result.files)} files")
    if result.card_data_lines:
        print("what the model card (README.md) says about the data:")
        print("\n".join(f"  {line}" for line in result.card_data_lines))
    print(
        "token: found"
        if result.token_found
        else "token: none found (run `hf auth login` or set HF_TOKEN before pushing)"
    )


def cmd_data(args: argparse.Namespace) -> None:
    from mmssl.datasets import is_prepared, prepare
    from mmssl.registry import DATASETS

    if args.action == "list":
        rows = [("NAME", "DOMAIN", "STATUS", "DESCRIPTION")]
        for name in DATASETS.names():
            b = DATASETS.get(name)
            status = "prepared" if is_prepared(name) else "embedded" if b.embedded else "not-prepared"
            rows.append((name, b.domain, status, b.description))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            print("  ".join(f"{v:<{w}}" for v, w in zip(r, widths)) + f"  {r[3]}")
        print("\nembedded: shipped inside mmssl, used as they are; `mmssl data prepare NAME` builds the others")
        return
    if not args.name:
        raise ConfigError("mmssl data prepare NAME: NAME is missing (see mmssl data list)")
    print(prepare(args.name, force=args.force))  # builds only when missing, or with --force


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmssl", description="Self-supervised pretraining for text, images, audio and graphs."
    )
    # -v works before or after the command: the subcommands' copy only sets it when given
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show other libraries' progress bars and reports (hidden by default)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show other libraries' progress bars and reports (hidden by default)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[verbose], **kwargs)

    add("recipes", help="list recipes").set_defaults(func=cmd_recipes)

    def with_set(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (repeatable)"
        )
        return sp

    sp = with_set(add("pretrain", help="pretrain a recipe"))
    sp.add_argument("recipe", help="recipe name (see `mmssl recipes`) or YAML file")
    sp.add_argument("--output-dir", type=Path, default=None)
    sp.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output-dir")
    sp.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an --output-dir that holds a run (removes only what a run writes)",
    )
    sp.set_defaults(func=cmd_pretrain)

    for name, func, helptext in (
        ("finetune", cmd_finetune, "fine-tune an export on a labelled task"),
        ("evaluate", cmd_evaluate, "evaluate frozen features or fine-tuning"),
    ):
        sp = with_set(add(name, help=helptext))
        sp.add_argument("run", type=Path, help="a run directory or an export folder")
        sp.add_argument(
            "--task", required=True, help="registered task name, or `file` / `hub` with --set task.path=..."
        )
        sp.add_argument("--domain", default=None, help="domain of an export made outside mmssl (e.g. text)")
        if name == "finetune":
            sp.add_argument(
                "--output-dir",
                type=Path,
                default=None,
                help="folder for fine-tunes (default RUN/finetune); each goes into DIR/TASK-INIT",
            )
            sp.add_argument(
                "--overwrite",
                action="store_true",
                help="replace a previous fine-tune in DIR/TASK-INIT (removes only what a fine-tune writes)",
            )
            sp.add_argument("--baseline", action="store_true", help="also fine-tune a random-init copy and compare")
        else:
            sp.add_argument("--protocol", choices=["linear", "knn", "finetune", "retrieval"], default="linear")
            sp.add_argument(
                "--init",
                choices=["pretrained", "random", "raw"],
                default=None,
                help="the export's weights, the same architecture untrained, or (linear, knn) the "
                "task's raw features instead of an encoder: pixels, MFCC statistics, ... "
                "(default: pretrained)",
            )
            sp.add_argument(
                "--baseline",
                action="store_true",
                help="also evaluate random init and (linear, knn) the raw features, each compared with pretrained",
            )
        sp.set_defaults(func=func)

    sp = add("export", help="export a run's encoder in Hugging Face format")
    sp.add_argument("run", type=Path)
    sp.add_argument("--to", type=Path, default=None, help="destination (default RUN/export)")
    sp.set_defaults(func=cmd_export)

    sp = add("push", help="upload an export to the Hugging Face Hub")
    sp.add_argument("run", type=Path, help="a run directory or an export folder")
    sp.add_argument("--repo-id", required=True)
    sp.add_argument("--private", action="store_true")
    sp.add_argument("--dry-run", action="store_true", help="list what would be uploaded; send nothing")
    sp.set_defaults(func=cmd_push)

    sp = add("data", help="offline dataset builders")
    sp.add_argument("action", choices=["list", "prepare"])
    sp.add_argument("name", nargs="?")
    sp.add_argument("--force", action="store_true", help="rebuild even if prepared")
    sp.set_defaults(func=cmd_data)
    return p


# Other libraries' progress bars and reports (tokenizer training, weight loading, dataset maps) are
# off unless --verbose: mmssl prints its own progress bar and one line per stage. Set before those
# libraries are imported (they read these once); a user's own setting wins.
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub's and transformers' bars
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",  # e.g. the report of a classifier head's newly initialised weights
    "DATASETS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
QUIET_LOGGERS = ("accelerate", "datasets", "transformers", "huggingface_hub", "torch_geometric", "urllib3", "httpx")
MAX_MESSAGE = 2000  # characters of an error message printed; a pasted 100 KB value is not echoed in full


class _Formatter(logging.Formatter):
    """Plain lines for information, ``warning:`` / ``error:`` in front of what needs attention."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def configure_output(verbose: bool) -> None:
    """Quiet the libraries mmssl drives unless ``verbose``; mmssl's own INFO lines and every warning stay."""
    if not verbose:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    # save_state keeps one name per tied tensor; mmssl.model.load_weights re-ties them on load
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


def error_message(e: BaseException) -> str:
    """What ``mmssl: error:`` prints for an exception a user can act on."""
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    elif isinstance(e, OSError) and e.filename is not None and e.strerror:  # raised by the OS, e.g. open()
        text = f"{e.filename}: {e.strerror}"
        if isinstance(e, PermissionError):
            text += " (choose a folder you can write to, e.g. with --output-dir)"
    else:
        text = str(e) or type(e).__name__
    return text if len(text) <= MAX_MESSAGE else f"{text[:MAX_MESSAGE]}... ({len(text):,} characters)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_output(args.verbose)
    try:
        args.func(args)
    except (MmsslError, ValueError, KeyError, OSError) as e:  # OSError: missing, unreadable, unwritable paths
        print(f"mmssl: error: {error_message(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
