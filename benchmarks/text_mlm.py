"""BERT masked-LM training throughput: mmssl's ``bert`` recipe vs the Hugging Face ``Trainer`` path.

What is compared (tokens per second of training, higher is better):

* **mmssl**: ``mmssl.trainer.Trainer(...).fit()``, the real loop with its logging
  (``metrics.jsonl``, TensorBoard, tqdm), training ``build_model(recipe, tokenizer)``: a
  ``BertForMaskedLM`` behind mmssl's encoder protocol plus the ``mlm`` objective, which masks
  inside the step and runs the vocabulary head on the masked positions only.
* **HF**: ``transformers.Trainer`` + ``DataCollatorForLanguageModeling(mlm_probability=0.15)``
  + ``BertForMaskedLM``, the path of transformers' ``run_mlm.py``: the collator masks, the
  model scores every position against the whole vocabulary (``labels=-100`` elsewhere).

Why it is fair: both sides train the same ``BertConfig`` (copied from mmssl's model) from the
same initial weights (checked), on the same packed blocks of the recipe's corpus
(``[CLS] block [SEP]``, ``data.block_size`` tokens, built once by
``DOMAINS.get("text").pretrain_data``; checked equal to what mmssl's ``BlockCollator`` emits),
with the same batch size, AdamW betas/eps, lr, warmup + cosine schedule, weight decay, gradient
clipping, dropout on, fp32, no dataloader workers and the same number of torch threads.
Otherwise each side keeps its own defaults (HF: fused AdamW and its collator; mmssl: its
objective and trainer), because those are what a user of either path gets.

How it is timed: each measurement builds a fresh model and trainer and runs ``skip + steps``
optimizer steps; a per-step callback (mmssl: a trainer hook; HF: ``on_step_end``) stamps the
clock after every optimizer step, and throughput is ``steps * batch_size * seq_len`` over the
time from the stamp of step ``skip`` to that of step ``skip + steps``. That leaves out model
building, the warm-up steps and the end-of-run checkpoint of mmssl, and includes data loading,
logging and everything else a step does. The sides alternate (mmssl, HF, mmssl, HF, ...) and the
ratio is of the medians. ``cpu`` is process CPU time over wall time during the timed steps:
below 80% of the thread count, another process took the cores and the measurement is flagged
``contended`` (it still counts; rerun on a quiet machine). The rounds, clocks, medians and flags
are ``benchmarks/harness.py``'s, shared by every side-by-side script.

Usage::

    python benchmarks/text_mlm.py                 # 3 rounds of 5 untimed + 30 timed steps per side
    python benchmarks/text_mlm.py --quick         # seconds-long smoke run on a tiny model
    python benchmarks/text_mlm.py --profile 5     # also: where a step's time goes, on both sides
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness  # benchmarks/harness.py: this script's folder comes first on sys.path
import torch
from harness import Stamp

# where both sides train; the clock waits for a GPU's queued kernels before each stamp
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# --quick: tiny data and model, so that the whole run takes seconds.
QUICK_OVERRIDES = [
    "data.max_texts=300",
    "data.block_size=32",
    "data.tokenizer.vocab_size=256",
    "encoder.hidden_size=32",
    "encoder.num_layers=2",
    "encoder.num_heads=2",
    "encoder.intermediate_size=64",
    "train.batch_size=4",
]


@dataclass(frozen=True)
class Setup:
    """Everything built once and shared by both sides."""

    recipe: Any
    blocks: Any  # datasets.Dataset of packed blocks (block_size - 2 ids) for mmssl's BlockCollator
    hf_rows: Any  # the same blocks as [CLS] block [SEP] rows for the HF collator
    tokenizer: Any
    collate: Any  # mmssl's BlockCollator
    config: Any  # the BertConfig both sides train
    train: Any  # the recipe's TrainConfig with max_steps = skip + steps

    @property
    def seq_len(self) -> int:
        return self.recipe.data.block_size

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.train.grad_accum_steps * self.seq_len


def build_setup(overrides: list[str], run_dir: Path, total_steps: int) -> Setup:
    """Train the tokenizer and pack the corpus once; check that both sides get identical rows and weights."""
    from accelerate.utils import set_seed
    from transformers import BertForMaskedLM

    from mmssl.model import build_model
    from mmssl.recipe import load_recipe
    from mmssl.registry import DOMAINS

    recipe = load_recipe("bert", overrides)
    set_seed(recipe.train.seed)
    data = DOMAINS.get("text").pretrain_data(recipe, run_dir, 0, 1)
    tok = data.processor
    cls, sep = tok.cls_token_id, tok.sep_token_id
    hf_rows = data.dataset.map(
        lambda b: {"input_ids": [[cls] + r + [sep] for r in b["input_ids"]]}, batched=True, desc="[CLS] block [SEP]"
    )
    for i in (0, len(hf_rows) - 1):
        if data.collate([data.dataset[i]]).units[0].tolist() != hf_rows[i]["input_ids"]:
            raise RuntimeError(f"row {i}: the HF input differs from what mmssl's BlockCollator produces")
    set_seed(recipe.train.seed)
    ours = build_model(recipe, tok).encoder.model
    config = copy.deepcopy(ours.config)
    set_seed(recipe.train.seed)
    theirs = BertForMaskedLM(copy.deepcopy(config)).state_dict()
    if not all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items()):
        raise RuntimeError("mmssl's and HF's models start from different weights")
    # a measurement is skip + steps optimizer steps; mmssl's only checkpoint, at the end, falls after the last stamp
    train = dataclasses.replace(
        recipe.train,
        max_steps=total_steps,
        checkpoint_every=total_steps,
        warmup_steps=min(recipe.train.warmup_steps, total_steps),
    )
    return Setup(recipe, data.dataset, hf_rows, tok, data.collate, config, train)


@dataclass(frozen=True)
class Measurement:
    tokens_per_s: float
    cpu: float  # process CPU seconds per wall second over the timed steps
    loss: float  # last logged training loss (a sanity check that the side trains)


def stamp() -> Stamp:
    """The clocks (wall, process CPU) after an optimizer step; on a GPU, after its queued kernels finish."""
    return harness.stamp(DEVICE)


def measure(stamps: list[Stamp], skip: int, steps: int, tokens_per_step: int, loss: float) -> Measurement:
    """Throughput between the stamps of optimizer steps ``skip`` and ``skip + steps`` (1-based)."""
    if len(stamps) < skip + steps:
        raise RuntimeError(f"only {len(stamps)} steps were stamped, expected {skip + steps}")
    timed = harness.span(stamps[skip - 1], stamps[skip + steps - 1])
    return Measurement(steps * tokens_per_step / timed.wall, timed.cpu, loss)


def run_mmssl(setup: Setup, skip: int, steps: int, out_dir: Path) -> Measurement:
    """One measurement of ``mmssl.trainer.Trainer.fit``."""
    from accelerate.utils import set_seed

    from mmssl.model import build_model
    from mmssl.trainer import Trainer

    stamps: list[Stamp] = []
    set_seed(setup.train.seed)
    model = build_model(setup.recipe, setup.tokenizer)
    trainer = Trainer(
        model, setup.blocks, setup.collate, setup.train, out_dir, hooks=[lambda _trainer, _step: stamps.append(stamp())]
    )
    last = trainer.fit()
    return measure(stamps, skip, steps, setup.tokens_per_step, last["loss"])


def uses_bf16(setup: Setup) -> bool:
    """Whether the recipe's ``train.mixed_precision`` resolves to bf16 autocast here (it does on both sides)."""
    from mmssl.trainer import resolve_mixed_precision

    return resolve_mixed_precision(setup.train.mixed_precision, cpu=not torch.cuda.is_available()) == "bf16"


def hf_trainer(setup: Setup, out_dir: Path, callbacks: list | None = None):
    """transformers' Trainer configured like the recipe's ``train`` section."""
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

    t = setup.train
    set_seed(t.seed)
    model = BertForMaskedLM(copy.deepcopy(setup.config))
    args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum_steps,
        max_steps=t.max_steps,
        bf16=uses_bf16(setup),
        learning_rate=t.lr,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        adam_beta1=t.betas[0],
        adam_beta2=t.betas[1],
        adam_epsilon=t.eps,
        lr_scheduler_type="cosine",
        logging_steps=t.log_every,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        seed=t.seed,
        dataloader_num_workers=t.num_workers,
        dataloader_drop_last=True,
    )
    mlm = setup.recipe.objective  # 15% of tokens; of those 80% [MASK], 10% random, 10% kept (BERT)
    collator = DataCollatorForLanguageModeling(
        setup.tokenizer,
        mlm_probability=mlm.mask_prob,
        mask_replace_prob=mlm.mask_token_frac,
        random_replace_prob=mlm.random_token_frac,
    )
    return Trainer(model=model, args=args, train_dataset=setup.hf_rows, data_collator=collator, callbacks=callbacks)


def run_hf(setup: Setup, skip: int, steps: int, out_dir: Path) -> Measurement:
    """One measurement of ``transformers.Trainer.train``."""
    from transformers import TrainerCallback

    stamps: list[Stamp] = []

    class StampSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(stamp())

    trainer = hf_trainer(setup, out_dir, [StampSteps()])
    result = trainer.train()
    logged = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return measure(stamps, skip, steps, setup.tokens_per_step, float(logged[-1] if logged else result.training_loss))


SIDES = {"mmssl": run_mmssl, "hf": run_hf}


# ---------------------------------------------------------------------------------------- profile
# Each side's step replayed by hand with the objects its trainer uses (model, collator, optimizer,
# scheduler), timed phase by phase; CPU kernels are synchronous, so wall time per call is exact.
# The hidden states are cut off the graph so that backward splits into head + loss and encoder
# (same gradients as one loss.backward()). "trainer remainder" = timed trainer step - phases.
class Clock:
    """Accumulates the wall time of named calls, in ms."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def __call__(self, name: str, fn):
        t = time.perf_counter()
        out = fn()
        self.ms[name] = self.ms.get(name, 0.0) + 1000 * (time.perf_counter() - t)
        return out


def mmssl_step_fn(setup: Setup, out_dir: Path):
    """A step of mmssl's ``MaskedLM.forward`` (bert_mask, encoder, head on masked positions) + clip + AdamW."""
    from accelerate.utils import set_seed

    from mmssl.masking import bert_mask
    from mmssl.model import build_model
    from mmssl.objectives.losses import unit_classification_loss
    from mmssl.optim import build_optimizer

    set_seed(setup.train.seed)
    model = build_model(setup.recipe, setup.tokenizer).train()
    enc, obj, cfg = model.encoder, model.objective, setup.recipe.objective
    head = obj.head if obj.head is not None else enc.prediction_head()
    opt, sched = build_optimizer(model, setup.train)

    def collate_and_mask(rows):
        batch = setup.collate(rows)
        return batch, *bert_mask(
            batch.units,
            batch.maskable,
            mask_token_id=enc.mask_token_id,
            vocab_size=enc.vocab_size,
            mask_prob=cfg.mask_prob,
            mask_token_frac=cfg.mask_token_frac,
            random_token_frac=cfg.random_token_frac,
        )

    def step(rows: list[dict], clock: Clock) -> None:
        batch, mask, corrupted = clock("collate + mask", lambda: collate_and_mask(rows))
        # what MaskedLM.forward runs: the encoder read at the masked units only (sparse last layer)
        hidden = clock("encoder fwd", lambda: enc.encode_at(batch.replace(units=corrupted), mask))  # [N, D]
        leaf = hidden.detach().requires_grad_()
        loss = clock("head + loss fwd", lambda: unit_classification_loss(head(leaf), batch.units[mask])[0])
        clock("head + loss bwd", loss.backward)
        clock("encoder bwd", lambda: hidden.backward(leaf.grad))
        clock("clip grad norm", lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), setup.train.max_grad_norm))
        clock("optimizer", lambda: (opt.step(), sched.step(), opt.zero_grad(set_to_none=True)))

    return step


def hf_step_fn(setup: Setup, out_dir: Path):
    """A step of ``BertForMaskedLM.forward(labels=...)`` with the HF Trainer's collator, clipping and optimizer."""
    import torch.nn.functional as F

    trainer = hf_trainer(setup, out_dir)
    trainer.create_optimizer_and_scheduler(num_training_steps=setup.train.max_steps)
    model, opt, sched, collator = trainer.model.train(), trainer.optimizer, trainer.lr_scheduler, trainer.data_collator
    vocab = model.config.vocab_size

    def step(rows: list[dict], clock: Clock) -> None:
        batch = clock("collate + mask", lambda: collator(rows))
        labels = batch.pop("labels")
        hidden = clock("encoder fwd", lambda: model.bert(**batch).last_hidden_state)
        leaf = hidden.detach().requires_grad_()
        loss = clock("head + loss fwd", lambda: F.cross_entropy(model.cls(leaf).view(-1, vocab), labels.view(-1)))
        clock("head + loss bwd", loss.backward)
        clock("encoder bwd", lambda: hidden.backward(leaf.grad))
        clock("clip grad norm", lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), setup.train.max_grad_norm))
        clock("optimizer", lambda: (opt.step(), sched.step(), model.zero_grad()))

    return step


def profile_both(
    setup: Setup, n: int, out_dir: Path, medians: dict[str, float], top: int = 8
) -> dict[str, dict[str, float]]:
    """Mean ms per phase over ``n`` replayed steps of each side (after 2 untimed ones), then the top ops."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(setup.train.seed)
    picks = [torch.randint(len(setup.blocks), (setup.train.batch_size,), generator=g).tolist() for _ in range(n + 2)]
    sources = {"mmssl": (mmssl_step_fn, setup.blocks), "hf": (hf_step_fn, setup.hf_rows)}
    table: dict[str, dict[str, float]] = {}
    ops: dict[str, list[tuple[str, float]]] = {}
    # the trainers' precision: bf16 autocast around forward and backward where the recipe resolves to bf16
    bf16 = uses_bf16(setup)
    for side, (make_step, rows) in sources.items():
        plain_step, clock = make_step(setup, out_dir / side), Clock()

        def step(batch_rows, clk, plain_step=plain_step):
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
                plain_step(batch_rows, clk)

        for i, idx in enumerate(picks):
            step(clock("fetch rows", functools.partial(rows.__getitems__, idx)), clock)
            if i == 1:  # two warm-up steps, then count afresh
                clock.ms = {}
        ms = {k: v / n for k, v in clock.ms.items()}
        ms["sum of phases"] = sum(ms.values())
        ms["trainer step (timed)"] = 1000 * setup.tokens_per_step / medians[side]
        ms["trainer remainder"] = ms["trainer step (timed)"] - ms["sum of phases"]
        table[side] = {k: round(v, 1) for k, v in ms.items()}
        with profile(activities=[ProfilerActivity.CPU], acc_events=True) as prof:  # n more steps, for the op table
            for idx in picks[2:]:
                step(rows.__getitems__(idx), Clock())
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        ops[side] = [(e.key, e.self_cpu_time_total / 1000 / n) for e in events]
    print(f"\nms per step, {n} steps replayed by hand (remainder = timed trainer step - sum of phases):")
    print(f"  {'phase':<22}{'mmssl':>9}{'hf':>9}")
    for phase in table["hf"]:
        print(f"  {phase:<22}{table['mmssl'].get(phase, 0.0):>9.1f}{table['hf'][phase]:>9.1f}")
    for side, rows_ in ops.items():
        print(f"top ops of {side} by self CPU time, ms per step: " + ", ".join(f"{k} {v:.1f}" for k, v in rows_))
    return table


# ---------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds, mmssl then HF in each (default 3)")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per measurement (default 30)")
    p.add_argument("--skip", type=int, default=5, help="untimed warm-up steps before them (default 5)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads for both sides (default: torch's, all cores)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="bert recipe override for both sides, e.g. train.batch_size=16 (repeatable)",
    )
    p.add_argument("--profile", type=int, default=0, metavar="N", help="also break down N steps of each side")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the tokenizer and runs here (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model and data, 1 round of 1 + 3 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.skip = 1, 3, 1
        args.overrides = QUICK_OVERRIDES + args.overrides
    if min(args.repeats, args.steps, args.skip) < 1 or args.profile < 0:
        p.error("--repeats, --steps and --skip must be >= 1, --profile >= 0")
    return args


def measure_rounds(setup: Setup, args: argparse.Namespace, work: Path, threads: int) -> dict[str, list[Measurement]]:
    """``args.repeats`` interleaved rounds (mmssl, HF, mmssl, HF, ...), every measurement printed."""
    gpu = DEVICE == "cuda"

    def side(name: str) -> Callable[[int], Measurement]:
        def run(r: int) -> Measurement:
            out_dir = work / f"round{r + 1}-{name}"
            shutil.rmtree(out_dir, ignore_errors=True)  # a reused --work-dir starts each run afresh
            m = SIDES[name](setup, args.skip, args.steps, out_dir)
            harness.check_threads(name, threads)
            print(
                f"round {r + 1}/{args.repeats} {name:>5}: {m.tokens_per_s:8.1f} tokens/s  cpu {m.cpu:.2f}  "
                f"loss {m.loss:.3f}{harness.flags(m.cpu, threads, gpu=gpu)}",
                flush=True,
            )
            return m

        return run

    def round_ratio(r: int, runs: Mapping[str, list[Measurement]]) -> None:
        print(
            f"round {r + 1}/{args.repeats} ratio: {runs['mmssl'][-1].tokens_per_s / runs['hf'][-1].tokens_per_s:.2f}x",
            flush=True,
        )

    return harness.interleave({name: side(name) for name in SIDES}, args.repeats, after_round=round_ratio)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints a report ending with one JSON line, which is also returned as a dict."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="text_mlm_bench-") as tmp:
        work = args.work_dir or Path(tmp)
        setup = build_setup(args.overrides, work / "data", args.skip + args.steps)
        cfg = setup.config
        model = {
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_hidden_layers,
            "num_heads": cfg.num_attention_heads,
            "intermediate_size": cfg.intermediate_size,
            "vocab_size": cfg.vocab_size,
        }
        print(
            f"bert recipe {model}, batch {setup.train.batch_size} x {setup.seq_len} tokens, {len(setup.blocks)} blocks; "
            f"torch {torch.__version__}, {harness.device_name(DEVICE)}, {threads} threads; {args.skip} untimed + "
            f"{args.steps} timed steps",
            flush=True,
        )
        runs = measure_rounds(setup, args, work, threads)
        medians = harness.medians(runs, lambda m: m.tokens_per_s)
        ratio = harness.ratio(medians, "mmssl", "hf")
        print(f"median: mmssl {medians['mmssl']:.1f} tokens/s, HF {medians['hf']:.1f} tokens/s, ratio {ratio:.2f}x")
        contended = sum(harness.contended(m.cpu, threads, gpu=DEVICE == "cuda") for ms in runs.values() for m in ms)
        harness.warn_if_contended(contended, threads)
        profile = profile_both(setup, args.profile, work / "profile", medians) if args.profile else None
    record = {
        "benchmark": "text_mlm",
        "mmssl_tokens_per_s": round(medians["mmssl"], 1),
        "hf_tokens_per_s": round(medians["hf"], 1),
        "ratio": round(ratio, 3),
        "repeats": args.repeats,
        "steps": args.steps,
        "skip": args.skip,
        "batch_size": setup.train.batch_size,
        "seq_len": setup.seq_len,
        "model": model,
        "torch_threads": threads,
        "torch": torch.__version__,
        "device": harness.device_name(DEVICE),
        "mixed_precision": setup.train.mixed_precision,
        "mmssl_runs": [round(m.tokens_per_s, 1) for m in runs["mmssl"]],
        "hf_runs": [round(m.tokens_per_s, 1) for m in runs["hf"]],
        "mmssl_cpu": [round(m.cpu, 2) for m in runs["mmssl"]],
        "hf_cpu": [round(m.cpu, 2) for m in runs["hf"]],
        "contended": contended,
    }
    if profile:
        record["profile_ms"] = profile
    return harness.print_record(record)


if __name__ == "__main__":
    main()
