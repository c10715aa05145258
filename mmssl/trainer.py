"""One Accelerate training loop for every recipe (pretraining and fine-tuning alike).

The loop, in order, for each optimizer step::

    for each micro-batch:   seed RNG (step, micro, rank) -> transform(batch) -> forward
                            -> all-ranks finite check -> backward (inside accelerator.accumulate)
    on the sync micro-batch: scheduled weight decay -> clip -> optimizer.step (or skip if non-finite) -> scheduler.step
                            -> model.after_optimizer_step (EMA teachers) -> step hooks
                            -> epoch hooks (at an epoch's end and the last step) -> log -> checkpoint

An objective with an adversary (a GAN's discriminator: :meth:`mmssl.objectives.base.Objective.adversary`) gets a
second optimizer: the adversary's gradient of ``ObjectiveOutput.adversary_loss`` is taken before the main backward
into a buffer of its own, replaces what the main loss left on the adversary at the sync micro-batch, and both
optimizers clip and step together, or skip a non-finite step together (:mod:`mmssl.adversary`).

The run lasts ``train.max_steps`` optimizer steps or, when that is unset, ``train.epochs`` passes over the data
(:func:`run_length`); the warmup/cosine schedule is sized to that number. Epoch hooks evaluate the model
(fine-tuning's validation slice), and :class:`BestWeights` keeps the weights of the best evaluation.

Exact resume: the RNG is re-seeded from ``(seed, step, micro-batch, rank)`` before every
micro-batch, the data order comes from Accelerate's seedable sampler, and a resumed run skips
the micro-batches already consumed in the current epoch, so an interrupted and resumed run
logs the same losses as an uninterrupted one.

Checkpoints (:mod:`mmssl.checkpoint`) are never unpickled: Accelerate's files are read with torch's
``weights_only`` loader, the loop counters and registered state are JSON and safetensors, and every
checkpoint is checked against its manifest before it is resumed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mmssl.adversary import AdversaryTraining
from mmssl.checkpoint import (
    CHECKPOINT_DIR,
    COMPLETE_MARKER,
    CheckpointError,
    Stateful,
    checkpoint_dirs,
    checkpoint_path,
    choose_checkpoint,
    finish_checkpoint,
    latest_checkpoint,
    load_trainer_state,
    prepare_checkpoint_dir,
    rotate_checkpoints,
    save_trainer_state,
)
from mmssl.config import MmsslError
from mmssl.metrics import append_metrics, truncate_after
from mmssl.optim import (
    build_adversary_optimizer,
    build_optimizer,
    find_adversary,
    set_weight_decay,
    weight_decay_schedule,
)
from mmssl.recipe import TrainConfig
from mmssl.types import Batch, ObjectiveOutput

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_DIR",
    "COMPLETE_MARKER",
    "TRACKER_DIR",
    "NonFiniteLossError",
    "Trainer",
    "TrainState",
    "checkpoint_dirs",
    "latest_checkpoint",
]  # mmssl.export and the tests import the checkpoint names from here

TRACKER_DIR = "tensorboard"  # TensorBoard event files, under the run directory
StepHook = Callable[["Trainer", int], "dict[str, float] | None"]
# called with the trainer and the epochs done (2.0 at the end of the second; 2.5 when the run ends half-way
# through the third); returned dicts are logged
EpochHook = Callable[["Trainer", float], "dict[str, float] | None"]


class NonFiniteLossError(MmsslError, RuntimeError):
    """Raised after ``train.max_consecutive_nonfinite`` NaN/inf losses in a row (the CLI prints its advice)."""


@dataclass
class TrainState:
    """Loop counters saved with every checkpoint (as JSON, under the name ``loop``)."""

    step: int = 0  # completed optimizer steps
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches consumed in the current epoch
    nonfinite_total: int = 0
    nonfinite_streak: int = 0

    def state_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.__dict__.update(state)


# Objectives may leave some encoder parameters out of a step's graph (a ViT's mask token under
# SimCLR, a [CLS]-only head under MLM): DDP must look for them instead of failing.
DDP_KWARGS = DistributedDataParallelKwargs(find_unused_parameters=True)


def use_cpu() -> bool:
    """True when no accelerator exists: Accelerate then needs ``cpu=True`` to run multi-process on gloo."""
    return not torch.accelerator.is_available()


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A distinct, reproducible seed per (step, micro-batch, process)."""
    return (seed * 1_000_003 + step * 1_009 + micro * 101 + rank) % (2**63 - 1)


def run_length(cfg: TrainConfig, steps_per_epoch: int | None) -> TrainConfig:
    """``cfg`` with the run's length and warmup as numbers of optimizer steps.

    The length is ``train.max_steps`` when it is set (it wins over ``train.epochs``, as transformers'
    ``max_steps`` wins over ``num_train_epochs``), else ``train.epochs x steps_per_epoch``. A
    ``train.warmup_steps`` below 1 is that fraction of the length, rounded.

    Raises:
        ValueError: ``train.epochs`` alone for streamed data (``steps_per_epoch`` None), whose length is unknown.
    """
    steps = cfg.max_steps
    if steps is None:
        if steps_per_epoch is None:
            raise ValueError(
                f"train.epochs={cfg.epochs} needs data of known length and this data is streamed: "
                "set train.max_steps instead"
            )
        steps = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps >= 1 else round(cfg.warmup_steps * steps)
    return dataclasses.replace(cfg, max_steps=steps, warmup_steps=int(warmup))


class Trainer:
    """Runs ``model(batch) -> ObjectiveOutput`` under Accelerate.

    Args:
        model: returns an :class:`ObjectiveOutput`; may define ``after_optimizer_step(step, max_steps)`` (SSLModel
            forwards it to its objective with the student encoder: EMA teachers update there).
        dataset: map-style or iterable dataset of samples for ``collate``.
        collate: samples -> :class:`Batch`.
        cfg: the recipe's ``train`` section.
        run_dir: where checkpoints, ``metrics.jsonl`` and TensorBoard logs go.
        transform: per-step random transform applied on the device before ``model``.
        unit_name: what ``tokens_per_s`` counts (also logged as ``<unit_name>_per_s``).
        hooks: called after every optimizer step; returned dicts are logged (online probes).
        epoch_hooks: called at the end of every epoch, and at the last step when an epoch does not end there
            (validation, :class:`BestWeights`); returned dicts are logged and printed; training mode is
            restored after them.
        drop_last: leave out each epoch's last, smaller batch (pretraining: contrastive losses want full
            batches); False (fine-tuning) trains on every row, also when there are fewer than a batch.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Any,
        collate: Callable[[list[Any]], Batch],
        cfg: TrainConfig,
        run_dir: Path,
        transform: Callable[[Batch], Batch] | None = None,
        unit_name: str = "tokens",
        hooks: list[StepHook] | None = None,
        epoch_hooks: list[EpochHook] | None = None,
        drop_last: bool = True,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.transform = transform
        self.unit_name = unit_name
        self.hooks = list(hooks or [])
        self.epoch_hooks = list(epoch_hooks or [])
        # One process may run trainers of different precision (pretrain in bf16, then fine-tune):
        # Accelerate keeps its state process-wide, so reset it (the process group stays) when it differs.
        self.mixed_precision = resolve_mixed_precision(cfg.mixed_precision, cpu=use_cpu())
        if AcceleratorState._shared_state and AcceleratorState().mixed_precision != self.mixed_precision:
            AcceleratorState._reset_state()
        self.accelerator = Accelerator(
            cpu=use_cpu(),
            mixed_precision=self.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum_steps,
            step_scheduler_with_optimizer=False,  # the schedule is defined in optimizer steps
            kwargs_handlers=[DDP_KWARGS],
            log_with="tensorboard",
            project_dir=str(self.run_dir),
            dataloader_config=DataLoaderConfiguration(
                use_seedable_sampler=True, data_seed=cfg.seed, dispatch_batches=False
            ),
        )
        self.loader = self._prepare_loader(dataset, collate, drop_last)
        self.cfg = run_length(cfg, self.steps_per_epoch)  # the schedule is sized to the real number of steps
        self._announce_settings(cfg)
        model = _sync_batch_norm(model, self.accelerator)
        adversary = find_adversary(model)  # a GAN's discriminator: trained by its own optimizer (mmssl.adversary)
        optimizer, scheduler = build_optimizer(model, self.cfg, exclude=adversary.module if adversary else None)
        self.decay_schedule = weight_decay_schedule(model)  # an objective's own weight-decay schedule (DINO), if any
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.adversary: AdversaryTraining | None = None
        if adversary is not None:  # prepared after the main pair: save_state writes optimizer_1.bin, scheduler_1.bin
            adv_optimizer, adv_scheduler = self.accelerator.prepare(*build_adversary_optimizer(adversary, self.cfg))
            self.adversary = AdversaryTraining(adversary, adv_optimizer, adv_scheduler, self.accelerator)
        skip = self.adversary.ids if self.adversary is not None else set()
        self.main_params = [p for p in self.model.parameters() if id(p) not in skip]
        self.state = TrainState()
        # Saved by mmssl.checkpoint as JSON and safetensors, never through Accelerate's
        # register_for_checkpointing, whose custom_checkpoint_N.pkl is unpickled with weights_only=False.
        self.states: dict[str, Stateful] = {"loop": self.state}

    def _prepare_loader(self, dataset: Any, collate: Callable[[list[Any]], Batch], drop_last: bool) -> Any:
        """The shuffled (map-style data), prepared DataLoader; refuses data of less than one batch per process."""
        cfg = self.cfg
        self.iterable = isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__")
        loader = DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=not self.iterable,
            collate_fn=collate,
            num_workers=cfg.num_workers,
            drop_last=drop_last,
        )
        loader = self.accelerator.prepare(loader)
        if not self.iterable and len(loader) == 0:
            raise ValueError(
                f"the dataset has {len(dataset)} samples, fewer than one batch of "
                f"train.batch_size={cfg.batch_size} per process: use more data or a smaller batch"
            )
        return loader

    @property
    def steps_per_epoch(self) -> int | None:
        """Optimizer steps per pass over the data (None for a streamed dataset).

        Accelerate steps at the end of the data even mid-accumulation, so a last short group counts as a step.
        """
        return None if self.iterable else math.ceil(len(self.loader) / self.cfg.grad_accum_steps)

    def epochs_done(self) -> float:
        """Passes over the data so far: 2.0 at the end of the second, 2.5 half-way through the third
        (whole passes only, for a streamed dataset)."""
        if self.iterable:
            return float(self.state.epoch)
        return round(self.state.epoch + self.state.batches_in_epoch / len(self.loader), 2)

    def _epoch_ended(self) -> bool:
        """Whether the last optimizer step consumed the last batch of an epoch (never known for streamed data)."""
        return not self.iterable and self.state.batches_in_epoch == len(self.loader)

    def _announce_settings(self, requested: TrainConfig) -> None:
        """One line for each setting that does something other than its name says (``requested``: the
        settings as given, before :func:`run_length`)."""
        cfg, acc = self.cfg, self.accelerator
        if requested.epochs is not None:
            self._note(self._length_note(requested))
        if cfg.mixed_precision == "auto":
            self._note(f"train.mixed_precision=auto: {self.mixed_precision} on {acc.device}")
        if self.mixed_precision == "fp16" and not acc.native_amp:
            self._note(
                f"train.mixed_precision=fp16 has no effect on {acc.device.type}: training in fp32 "
                "(bf16 is the mixed precision that runs on CPU)"
            )
        if cfg.max_grad_norm <= 0:
            self._note(f"train.max_grad_norm={cfg.max_grad_norm}: gradient clipping is off (<= 0 disables it)")

    def _length_note(self, requested: TrainConfig) -> str:
        """How many optimizer steps ``train.epochs`` makes, or that ``train.max_steps`` wins over it."""
        cfg, per_epoch = self.cfg, self.steps_per_epoch
        if requested.max_steps is None:
            return (
                f"train.epochs={requested.epochs}: {cfg.max_steps} optimizer steps ({per_epoch} per epoch), "
                f"{cfg.warmup_steps} of warmup"
            )
        length = "" if per_epoch is None else f": {cfg.max_steps / per_epoch:.2f} epochs of {per_epoch} steps"
        return f"train.max_steps={requested.max_steps} wins over train.epochs={requested.epochs}{length}"

    def _note(self, message: str) -> None:
        """Print one line once per machine, above the progress bar rather than into it."""
        if self.accelerator.is_local_main_process:
            tqdm.write(message)

    def register_state(self, name: str, obj: Stateful) -> None:
        """Save ``obj.state_dict()`` with every checkpoint and load it on resume (teachers, queues, monitors).

        The values must be tensors or JSON scalars; they are written as safetensors and JSON by the
        main process, so the state must be the same on every process.
        """
        if name in self.states:
            raise ValueError(f"a trainer state named {name!r} is already registered")
        self.states[name] = obj

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """``save_state`` and the registered state into ``checkpoints/step-N``, made durable and marked
        complete, then keep only the last ``keep_checkpoints``."""
        acc = self.accelerator
        out = checkpoint_path(self.run_dir, self.state.step)
        if acc.is_main_process:
            prepare_checkpoint_dir(out)
        acc.wait_for_everyone()
        acc.save_state(str(out))
        if acc.is_main_process:
            save_trainer_state(out, self.states)
        acc.wait_for_everyone()  # every process has written its random_states_<rank>.pkl
        if acc.is_main_process:
            finish_checkpoint(out, self.state.step)
            rotate_checkpoints(self.run_dir, self.cfg.keep_checkpoints)
        acc.wait_for_everyone()
        return out

    def resume(self) -> Path | None:
        """Load the newest intact checkpoint of ``run_dir``, if any; returns its path.

        Without a complete checkpoint the run starts from step 0, and the training lines of
        ``metrics.jsonl`` are dropped (they will be logged again).
        """
        ckpt = choose_checkpoint(self.accelerator, self.run_dir)
        if ckpt is None:
            self._note(f"no complete checkpoint in {self.run_dir}: starting from step 0")
        else:
            try:
                self.accelerator.load_state(str(ckpt))
            except pickle.UnpicklingError:  # weights_only refused a file the manifest vouched for
                raise CheckpointError(
                    f"{ckpt} holds a file that is not plain tensors and numbers; it was not "
                    "loaded: start this run again with --overwrite"
                ) from None
            load_trainer_state(ckpt, self.states)
            log.info("resumed from %s (step %d)", ckpt, self.state.step)
        if self.accelerator.is_main_process:
            truncate_after(self.run_dir, self.state.step)
        return ckpt

    # ------------------------------------------------------------------ data
    def _batches(self):
        """Yield micro-batches forever, epoch after epoch, resuming mid-epoch where needed."""
        while True:
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(self.state.epoch)
            loader = self.loader
            if self.state.batches_in_epoch:
                loader = self.accelerator.skip_first_batches(self.loader, self.state.batches_in_epoch)
            got_any = False
            for batch in loader:
                got_any = True
                self.state.batches_in_epoch += 1
                yield batch
            if not got_any and self.state.batches_in_epoch == 0:
                raise ValueError("the training data yielded no batch (empty dataset?)")
            self.state.epoch += 1
            self.state.batches_in_epoch = 0

    # ------------------------------------------------------------------ step
    def _micro_step(self, batch: Batch, micro: int) -> ObjectiveOutput:
        acc = self.accelerator
        torch.manual_seed(step_seed(self.cfg.seed, self.state.step, micro, acc.process_index))
        if self.transform is not None:
            batch = self.transform(batch)
        out: ObjectiveOutput = self.model(batch)
        # No host sync here: a NaN/inf loss makes the (all-reduced, so identical on every
        # process) gradient norm non-finite, and _optimizer_step skips the step on all of them.
        if self.adversary is not None:  # its gradient first, into its own buffer (the graphs may share nodes)
            acc.backward(self.adversary.accumulate(out))
        elif out.adversary_loss is not None:
            raise ValueError(
                "the objective returned an adversary_loss but declares no adversary: override Objective.adversary()"
            )
        else:
            acc.backward(out.loss)
        return out

    def _optimizer_step(self) -> dict[str, float]:
        """Clip and step (the main optimizer and the adversary's, if any), or skip a step whose gradient is
        non-finite (both optimizers skip it). Returns the pre-clip gradient norms (``grad_norm``, and
        ``grad_norm_adversary``)."""
        acc = self.accelerator
        if self.decay_schedule is not None:
            decay = self.decay_schedule.scheduled_weight_decay(
                self.cfg.weight_decay, self.state.step, self.cfg.max_steps
            )
            set_weight_decay(self.optimizer, decay)
        if self.adversary is not None:
            self.adversary.install()  # before the main clip, which unscales every optimizer's gradient under fp16
        norms = {"grad_norm": self._clip_main()}
        if self.adversary is not None:
            norms["grad_norm_adversary"] = self.adversary.clip(self.cfg.max_grad_norm)
        finite = all(map(math.isfinite, norms.values()))
        if self.adversary is not None:
            self.adversary.step(finite)  # before the main step: under fp16 its scaler.update() closes both
        if acc.scaler is not None:
            # fp16: overflowing steps are the GradScaler's business: it skips them and lowers its scale
            self.optimizer.step()
        elif finite:
            self.optimizer.step()
            self.state.nonfinite_streak = 0
        else:
            self._skip_nonfinite()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norms

    def _skip_nonfinite(self) -> None:
        """Count a skipped non-finite step; abort after ``train.max_consecutive_nonfinite`` in a row."""
        self.state.nonfinite_total += 1
        self.state.nonfinite_streak += 1
        self._note(
            f"step {self.state.step + 1}: non-finite loss or gradient, step skipped "
            f"({self.state.nonfinite_streak} in a row, {self.state.nonfinite_total} in total)"
        )
        if self.state.nonfinite_streak >= self.cfg.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{self.state.nonfinite_streak} non-finite losses in a row at step {self.state.step + 1} "
                f"(train.max_consecutive_nonfinite={self.cfg.max_consecutive_nonfinite}); {self._nonfinite_advice()}"
            )

    def _clip_main(self) -> float:
        """Clip the main optimizer's gradient to ``train.max_grad_norm`` (<= 0: no clipping); its pre-clip norm."""
        params = [p for p in self.main_params if p.grad is not None]
        if self.cfg.max_grad_norm > 0:
            return float(self.accelerator.clip_grad_norm_(params, self.cfg.max_grad_norm))
        if not params:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])))

    def _nonfinite_advice(self) -> str:
        """What to try against NaN/inf losses, for the precision the run actually computes in."""
        advice = "lower train.lr or raise train.warmup_steps"
        if self.mixed_precision == "bf16":
            return f"{advice}, or train in fp32 (train.mixed_precision=no)"
        return f"{advice}, and check the data for NaN or infinite values"

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train to ``cfg.max_steps`` (or ``cfg.max_minutes``); returns the last logged metrics."""
        acc = self.accelerator
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        # On resume, TensorBoard hides the points after the checkpoint's step: this run logs them again.
        writer_kwargs = {"purge_step": self.state.step + 1} if resume else {}
        acc.init_trackers(TRACKER_DIR, init_kwargs={"tensorboard": writer_kwargs})
        bar = tqdm(
            total=self.cfg.max_steps,
            initial=self.state.step,
            disable=not acc.is_local_main_process,
            desc="train",
            dynamic_ncols=True,
        )
        try:
            # log lines (the kNN monitor's) go above the live bar, not into it
            with logging_redirect_tqdm(_console_loggers(), tqdm_class=tqdm):
                return self._train(bar)
        finally:
            bar.close()
            for tracker in acc.trackers:  # flush TensorBoard, also when interrupted; the process group stays up
                tracker.finish()

    def _train(self, bar: tqdm) -> dict[str, float]:
        """The loop of :meth:`fit`, from ``state.step`` to the end."""
        acc = self.accelerator
        unwrapped = acc.unwrap_model(self.model)
        window = _Window()
        last: dict[str, float] = {}
        start = self._fit_start = time.perf_counter()
        batches = self._batches()
        self.model.train()
        while self.state.step < self.cfg.max_steps:
            micro = 0
            while True:
                batch = next(batches)
                with acc.accumulate(self.model):
                    window.add(self._micro_step(batch, micro), batch)
                    micro += 1
                    if acc.sync_gradients:
                        grad_norms = self._optimizer_step()
                        break
            self.state.step += 1
            if hasattr(unwrapped, "after_optimizer_step"):
                unwrapped.after_optimizer_step(self.state.step, self.cfg.max_steps)
            window.grad_norms(grad_norms)
            out_of_time = self._out_of_time(start)
            final = out_of_time or self.state.step == self.cfg.max_steps
            extra = {**self._run_hooks(), **self._run_epoch_hooks(final)}
            if self.state.step % self.cfg.log_every == 0 or final or extra:
                last = self._log(window, extra)
                window = _Window()
                bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}")
            bar.update(1)
            if self.state.step % self.cfg.checkpoint_every == 0 or final:
                self.save_checkpoint()
            if out_of_time:
                self._note(f"train.max_minutes={self.cfg.max_minutes} reached at step {self.state.step}; stopping")
                break
        return last

    def close(self) -> None:
        """End the run: finish trackers and tear down the process group (call once, at the very end)."""
        self.accelerator.end_training()

    def _out_of_time(self, start: float) -> bool:
        if self.cfg.max_minutes is None:
            return False
        flag = torch.tensor([float(time.perf_counter() - start > 60 * self.cfg.max_minutes)])
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.gather(flag.to(self.accelerator.device))
        return bool(flag.max() > 0)

    def _run_hooks(self) -> dict[str, float]:
        extra: dict[str, float] = {}
        for hook in self.hooks:
            extra.update(hook(self, self.state.step) or {})
        return extra

    def _run_epoch_hooks(self, final: bool) -> dict[str, float]:
        """The epoch hooks' results at the end of an epoch, and at the ``final`` step if no epoch ends there."""
        if not self.epoch_hooks or not (final or self._epoch_ended()):
            return {}
        epoch = self.epochs_done()
        extra: dict[str, float] = {}
        for hook in self.epoch_hooks:
            extra.update(hook(self, epoch) or {})
        self.model.train()  # an evaluation may have left the model in eval mode
        if extra:
            values = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in extra.items())
            self._note(f"epoch {epoch:g} (step {self.state.step}): {values}")
        return extra

    def _log(self, window: _Window, extra: dict[str, float]) -> dict[str, float]:
        acc = self.accelerator
        stats = window.reduce(acc)
        epoch = self.state.epoch + int(self._epoch_ended())  # whole epochs done, counting the one this step ended
        record: dict[str, Any] = {"step": self.state.step, "epoch": epoch, **stats}
        record["lr"] = self.scheduler.get_last_lr()[0]
        if self.adversary is not None:
            record["lr_adversary"] = self.adversary.lr
        if self.decay_schedule is not None:
            record["weight_decay"] = next(g["weight_decay"] for g in self.optimizer.param_groups if g.get("decayed"))
        record["nonfinite_skipped"] = self.state.nonfinite_total
        record["elapsed_s"] = round(time.perf_counter() - self._fit_start, 2)  # wall time of this fit() call
        if self.unit_name != "tokens":
            record[f"{self.unit_name}_per_s"] = record["tokens_per_s"]
        record.update(extra)
        if acc.is_main_process:
            append_metrics(self.run_dir, record)
        acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=self.state.step)
        return record


class BestWeights:
    """An epoch hook that evaluates the model and keeps a copy of its weights at the best evaluation so far.

    ``rank`` orders evaluations, higher first, element by element (``(accuracy, -loss)``: the accuracy, then
    the loss among equal accuracies); a later evaluation replaces the kept weights only by ranking strictly
    higher, so an exact tie keeps the earlier weights. Register it with :meth:`Trainer.register_state` and a
    resumed run still knows the best it saw before.

    Args:
        evaluate: ``model -> {name: value}`` on the unwrapped model (logged each time); may leave it in eval mode.
        rank: ``metrics -> tuple`` of an evaluation; a NaN never ranks higher.
    """

    def __init__(
        self, evaluate: Callable[[nn.Module], dict[str, float]], rank: Callable[[dict[str, float]], tuple[float, ...]]
    ) -> None:
        self.evaluate, self.rank = evaluate, rank
        self.metrics: dict[str, float] = {}  # the kept weights' evaluation, and when it was made
        self.epoch: float | None = None
        self.step: int | None = None
        self.weights: dict[str, torch.Tensor] = {}  # CPU copies of the model's state dict

    def __call__(self, trainer: Trainer, epoch: float) -> dict[str, float]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        metrics = {k: float(v) for k, v in self.evaluate(model).items()}
        if self._better(metrics):
            self.metrics, self.epoch, self.step = metrics, epoch, trainer.state.step
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return metrics

    def _better(self, metrics: dict[str, float]) -> bool:
        """Whether ``metrics`` rank strictly higher than the kept weights' (anything beats no weights)."""
        if not self.weights:
            return True
        new, kept = self.rank(metrics), self.rank(self.metrics)
        return not any(map(math.isnan, new)) and (any(map(math.isnan, kept)) or new > kept)

    def restore(self, model: nn.Module) -> None:
        """Load the kept weights into ``model`` (the unwrapped model)."""
        if not self.weights:
            raise RuntimeError("no weights were kept: the hook never ran")
        model.load_state_dict(self.weights)

    def state_dict(self) -> dict[str, Any]:
        metrics = {f"metric.{k}": v for k, v in self.metrics.items()}
        weights = {f"weights.{k}": v for k, v in self.weights.items()}
        return {"epoch": self.epoch, "step": self.step, **metrics, **weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step = state["epoch"], state["step"]
        self.metrics = {k.removeprefix("metric."): v for k, v in state.items() if k.startswith("metric.")}
        self.weights = {k.removeprefix("weights."): v for k, v in state.items() if k.startswith("weights.")}


def resolve_mixed_precision(setting: str, cpu: bool) -> str:
    """``train.mixed_precision``, with ``auto`` resolved to ``bf16`` where bf16 math is native.

    Native means a CUDA GPU that supports bf16 (Ampere and later) or, on CPU, oneDNN's bf16
    kernels (AVX512-BF16 or AMX); anywhere else ``auto`` is ``no`` (fp32), since emulated bf16
    is slower than fp32.
    """
    if setting != "auto":
        return setting
    if not cpu and torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"


def _console_loggers() -> list[logging.Logger]:
    """The loggers that print to the terminal: the root (``logging.basicConfig``) and mmssl's, if it has its own."""
    loggers = [logging.root, logging.getLogger("mmssl")]
    return [
        lg
        for lg in loggers
        if any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr) for h in lg.handlers)
    ]


def _sync_batch_norm(model: nn.Module, accelerator: Accelerator) -> nn.Module:
    """Batch norm over the global batch on several GPUs (SimCLR, BYOL and MoCo heads and ResNets).

    ``nn.SyncBatchNorm`` runs on accelerators only; on several CPU processes each process
    normalises its own batch, which the log says once.
    """
    if accelerator.num_processes == 1 or not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        return model
    if accelerator.device.type in ("cuda", "xpu"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    accelerator.print("note: batch norm statistics are per process on CPU (nn.SyncBatchNorm needs a GPU)")
    return model


class _Window:
    """Sums over the micro-batches between two log lines, kept as tensors (no host sync per step)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.samples = 0
        self.units: torch.Tensor | int = 0
        self.norms: dict[str, list[float]] = {"grad_norm": []}

    def _add(self, key: str, value: torch.Tensor | float) -> None:
        value = torch.as_tensor(value).detach().float()
        finite = torch.isfinite(value)  # a skipped (non-finite) micro-batch does not enter the means
        self.sums[key] = self.sums.get(key, 0.0) + torch.where(finite, value, 0.0)
        self.counts[key] = self.counts.get(key, 0) + finite.float()

    def add(self, out: ObjectiveOutput, batch: Batch) -> None:
        self.samples += batch.batch_size
        self.units = self.units + (~batch.padding_mask).sum()
        self._add("loss", out.loss)
        if out.adversary_loss is not None:
            self._add("loss_adversary", out.adversary_loss)
        for k, v in out.terms.items():
            self._add(f"loss_{k}", v)
        for k, v in out.logs.items():
            self._add(k, v)

    def grad_norms(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            kept = self.norms.setdefault(key, [])  # a window of skipped steps only logs NaN
            if math.isfinite(value):
                kept.append(value)

    def reduce(self, acc: Accelerator) -> dict[str, float]:
        """Means of the logged values and throughput, summed/averaged over processes."""
        keys = sorted(self.sums)
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        means = [
            (self.sums[k] / self.counts[k]).cpu() if float(self.counts[k]) else torch.tensor(float("nan")) for k in keys
        ]
        rates = [torch.tensor(self.samples / elapsed), torch.as_tensor(self.units).cpu().double() / elapsed]
        vec = torch.stack([v.double().reshape(()) for v in means + rates])
        if acc.num_processes > 1:
            vec = acc.gather(vec.to(acc.device).reshape(1, -1)).reshape(acc.num_processes, -1).cpu()
            vec = torch.cat([vec[:, :-2].mean(0), vec[:, -2:].sum(0)])
        out = {k: float(v) for k, v in zip(keys, vec[:-2].tolist())}
        for key, norms in self.norms.items():
            out[key] = sum(norms) / len(norms) if norms else float("nan")
        out["samples_per_s"] = float(vec[-2])
        out["tokens_per_s"] = float(vec[-1])
        return out
