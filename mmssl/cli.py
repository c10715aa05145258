"""The ``mmssl`` command line (see docs/getting-started.md)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

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


class _Outcome(NamedTuple):
    """One init at one seed: its result record, and which of the test rows (shared by every init) it got right."""

    record: dict
    correct: Any  # bool [M]
    labels: Any  # [M]


def _seeds(args: argparse.Namespace, cfg: Any) -> tuple[int, ...]:
    """The seeds of ``--seeds K``: ``train.seed`` and the K - 1 after it (0..K-1 by default). Each draws its own
    label subset (``task.labels_per_class`` / ``task.label_fraction``) and, for fine-tuning, seeds the training."""
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: give 1 or more seeds")
    return tuple(cfg.train.seed + i for i in range(args.seeds))


def _with_seed(cfg: Any, seed: int) -> Any:
    raw = to_dict(cfg)
    raw["train"]["seed"] = seed
    return from_dict(type(cfg), raw)


def _finetunes(args: argparse.Namespace, cfg: Any, output_dir: Path | None, overwrite: bool) -> None:
    """Fine-tune ``cfg.init`` at each seed of ``--seeds``; with ``--baseline`` the pretrained and a random-init copy,
    and the raw features' linear probe on the same label subsets as a reference (raw features cannot be
    fine-tuned), each compared with the pretrained."""
    from mmssl.finetune import finetune, load_predictions

    seeds = _seeds(args, cfg)
    # the raw-feature reference first: it is quick, and a domain without one fails before any training
    raw = _probe_outcomes("linear", args, cfg, "raw", seeds) if args.baseline else []
    outcomes: dict[str, list[_Outcome]] = {}
    for seed in seeds:
        for init in ("pretrained", "random") if args.baseline else (cfg.init,):
            record = finetune(
                args.run, _with_seed(_with_init(cfg, init), seed), output_dir, args.domain, overwrite=overwrite
            )
            _print_result(record)
            print(f"fine-tuned model: {Path(record['output_dir']) / 'export'}")
            pred, label = load_predictions(Path(record["output_dir"]))
            outcomes.setdefault(init, []).append(_Outcome(record, pred == label, label))
    if raw:
        outcomes["raw"] = raw
    base = Path(next(iter(outcomes.values()))[0].record["output_dir"]).parent  # where the records go outside a run
    _compare(cfg, "after fine-tuning", outcomes, "finetune", _run_dir(args.run) or base)
    if _run_dir(args.run):  # the run's report draws its fine-tunes too
        print(f"report: mmssl report {_run_dir(args.run)}")


def _probe_outcomes(
    protocol: str, args: argparse.Namespace, cfg: Any, init: str, seeds: tuple[int, ...]
) -> list[_Outcome]:
    """The probe ``protocol`` on the features of ``init``, one :class:`_Outcome` per seed (features computed once)."""
    from mmssl.probes import run_probes

    results = run_probes(protocol, args.run, _with_init(cfg, init), args.domain, seeds)
    for r in results:
        _print_result(r.record)
    return [_Outcome(r.record, (r.predictions == r.labels).numpy(), r.labels.numpy()) for r in results]


def _run_dir(path: Path) -> Path | None:
    """The run ``path`` is or holds the export of (None: an export outside a run)."""
    from mmssl.export import resolve_export

    return resolve_export(Path(path))[1]


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mmssl.tasks import check_init, has_label_budget

    cfg = _finetune_config(args.set, args.task, args.init)
    check_init(cfg.init, args.protocol)
    if args.protocol in ("linear", "knn"):
        _probes(args, cfg)
    elif args.protocol == "finetune":
        _finetunes(args, cfg, None, False)
    else:  # retrieval: paired (two-tower) exports, recall@k both ways
        from mmssl.probes import retrieval_probe

        if has_label_budget(cfg.task) or args.seeds != 1:
            raise ValueError(
                "--protocol retrieval trains nothing, so task.labels_per_class, task.label_fraction and --seeds "
                "do not apply to it: leave them out"
            )
        for init in ("pretrained", "random") if args.baseline else (cfg.init,):
            _print_result(retrieval_probe(args.run, _with_init(cfg, init), domain=args.domain))


def _probes(args: argparse.Namespace, cfg: Any) -> None:
    """``--protocol linear|knn`` with the features of ``cfg.init``, or with ``--baseline`` those of the pretrained
    encoder, the random-init one and the domain's raw features side by side, each compared with the pretrained;
    at each seed of ``--seeds`` (each draws its own label subset; the features are computed once per init)."""
    seeds = _seeds(args, cfg)
    inits = ("pretrained", "random", "raw") if args.baseline else (cfg.init,)
    outcomes = {init: _probe_outcomes(args.protocol, args, cfg, init, seeds) for init in inits}
    _compare(cfg, f"of the {args.protocol} probe", outcomes, "evaluate", _run_dir(args.run))


def _init_names(outcomes: dict[str, list[_Outcome]], event: str) -> dict[str, str]:
    """What each init is called: ``pretrained init``, ``random init``, ``raw tf-idf`` (beside fine-tunes
    ``raw tf-idf (linear probe)``: raw features are probed, not fine-tuned)."""
    names = {}
    for init, runs in outcomes.items():
        probed = " (linear probe)" if event == "finetune" else ""
        names[init] = f"raw {runs[0].record['baseline']}{probed}" if init == "raw" else f"{init} init"
    return names


def _check_paired(outcomes: dict[str, list[_Outcome]]) -> None:
    """Every init was scored on the same test rows and, at each seed, trained on the same label subset."""
    import numpy as np

    first = next(iter(outcomes.values()))
    for runs in outcomes.values():
        for mine, ref in zip(runs, first, strict=True):
            if not np.array_equal(mine.labels, ref.labels):
                raise RuntimeError("the inits were scored on different test rows")
            if mine.record.get("train_subset") != ref.record.get("train_subset"):
                raise RuntimeError(f"the inits were trained on different label subsets at seed {ref.record['seed']}")


def _compare(cfg: Any, what: str, outcomes: dict[str, list[_Outcome]], event: str, log_dir: Path | None) -> None:
    """With several inits (``--baseline``) or seeds: print how each compares with the first (pretrained) and
    append the summary (event ``EVENT_summary``) to ``log_dir/metrics.jsonl`` (None: no run to log to)."""
    from mmssl.metrics import append_metrics
    from mmssl.stats import OVER_SEEDS_TEST, compare_over_seeds

    reference = next(iter(outcomes))
    runs = outcomes[reference]
    if len(outcomes) == 1 and len(runs) == 1:
        return
    _check_paired(outcomes)
    names = _init_names(outcomes, event)
    summary = compare_over_seeds({init: [o.correct for o in seeds] for init, seeds in outcomes.items()}, reference)
    if len(runs) == 1:
        print(f"\n{_one_seed_text(cfg, what, names, outcomes)}")
    else:
        print(f"\n{_seeds_text(cfg, what, names, runs, summary)}")
    first = runs[0].record
    record = {
        "event": f"{event}_summary",
        **({"protocol": first["protocol"]} if event == "evaluate" else {}),
        "task": cfg.task.name,
        **{k: first[k] for k in ("labels_per_class", "label_fraction") if k in first},
        "seeds": [o.record["seed"] for o in runs],
        "n_train": first["n_train"],
        "n_test": len(runs[0].labels),
        "reference": reference,
        "over_seeds_test": OVER_SEEDS_TEST,
        "inits": {init: {"name": names[init], **row} for init, row in summary.items()},
    }
    if log_dir is not None:
        append_metrics(log_dir, record)


def _training_rows(cfg: Any, record: dict) -> str:
    """``2 labels per class (4 training rows)``, or ``all 48 training rows`` without a label budget."""
    from mmssl.tasks import budget_name, has_label_budget

    if has_label_budget(cfg.task):
        return f"{budget_name(cfg.task)} ({record['n_train']} training rows)"
    return f"all {record['n_train']} training rows"


def _one_seed_text(cfg: Any, what: str, names: dict[str, str], outcomes: dict[str, list[_Outcome]]) -> str:
    """Each init's accuracy, then each one's paired comparison with the first (gain, 95% interval, McNemar)."""
    from mmssl.stats import paired_lines
    from mmssl.tasks import has_label_budget

    reference, *others = outcomes
    first = outcomes[reference][0]
    budget = f", {_training_rows(cfg, first.record)}, seed {first.record['seed']}" if has_label_budget(cfg.task) else ""
    width = max(16, *map(len, names.values()))
    lines = [f"{cfg.task.name} test accuracy {what}{budget} ({len(first.labels)} held-out examples)"]
    lines += [f"  {names[init]:<{width}} {runs[0].record['accuracy']:.4f}" for init, runs in outcomes.items()]
    other_words = {"random": "the random one", "raw": "the raw-feature baseline"}
    for init in others:
        lines.append(f"{names[reference]} against {names[init]}:")
        lines.append(paired_lines(first.correct, outcomes[init][0].correct, other_words.get(init, names[init])))
    lines.append("over seeds: a paired test of the accuracy differences needs 2 or more seeds (--seeds K)")
    return "\n".join(lines)


def _seeds_text(cfg: Any, what: str, names: dict[str, str], runs: list[_Outcome], summary: dict) -> str:
    """:func:`mmssl.stats.seeds_table` under a title naming the task, the budget and the seeds (``runs``: the
    reference init's, one per seed)."""
    from mmssl.stats import seeds_table

    seeds = [o.record["seed"] for o in runs]
    title = (
        f"{cfg.task.name} test accuracy {what}, {_training_rows(cfg, runs[0].record)}, seeds {seeds[0]}-{seeds[-1]} "
        f"({len(runs[0].labels)} held-out examples each)"
    )
    return seeds_table(title, names, summary, len(runs[0].labels))


def cmd_report(args: argparse.Namespace) -> None:
    from mmssl.report import write_report

    features = not args.no_features
    print(f"report: {write_report(args.run, args.task, args.set, features, args.max_points)}")


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
            status = "embedded" if b.embedded else "prepared" if is_prepared(name) else "not-prepared"
            rows.append((name, b.domain, status, b.description))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            print("  ".join(f"{v:<{w}}" for v, w in zip(r, widths)) + f"  {r[3]}")
        print(
            "\nembedded: shipped inside mmssl, used as they are (the first use copies or builds them into the "
            "cache); `mmssl data prepare NAME` builds the others"
        )
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
        sp.add_argument(
            "--seeds",
            type=int,
            default=1,
            metavar="K",
            help="repeat with K seeds (train.seed + 0..K-1): each draws its own label subset (task.labels_per_class, "
            "task.label_fraction) and seeds the fine-tuning; prints the mean, spread and paired tests",
        )
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
            sp.add_argument(
                "--baseline",
                action="store_true",
                help="also fine-tune a random-init copy, and probe the raw features on the same labels, and compare",
            )
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

    sp = with_set(add("report", help="plot a run's metrics and results into RUN/report/ (PNG files + report.md)"))
    sp.add_argument("run", type=Path, help="a run directory (or a fine-tune folder)")
    sp.add_argument("--task", default=None, help="labelled task of the feature map (default: the run's own)")
    sp.add_argument("--no-features", action="store_true", help="skip the t-SNE map of the frozen features")
    sp.add_argument("--max-points", type=int, default=2000, help="test rows in the feature map (stratified sample)")
    sp.set_defaults(func=cmd_report)

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
