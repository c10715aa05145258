"""The second optimizer of an objective with an adversary (a GAN's discriminator), its gradients kept apart.

An objective declares its adversary with :meth:`mmssl.objectives.base.Objective.adversary` and returns
``ObjectiveOutput.adversary_loss``. Per micro-batch the trainer calls :meth:`AdversaryTraining.accumulate`
*before* ``accelerator.backward(loss)``:

* ``d adversary_loss / d (adversary parameters)`` comes from ``torch.autograd.grad`` into a buffer of its own,
  never into any ``.grad``: so the adversary loss reaches no other parameter, even when the objective did not
  detach its inputs, and DDP's reducer hooks (which fire on ``.grad`` accumulation) do not run twice.
* The main backward then leaves gradients on the adversary too (a generator's loss goes through the
  discriminator); on the sync micro-batch :meth:`AdversaryTraining.install` replaces them by the buffer,
  averaged over processes as DDP averages the main gradients.

The adversary loss is divided by ``train.grad_accum_steps`` and scaled by the fp16 GradScaler exactly as
``accelerator.backward`` does the main loss. With fp16 both optimizers share that one GradScaler: the trainer
unscales both before clipping and :meth:`AdversaryTraining.step` steps the adversary through the scaler
before the main optimizer's step, whose ``scaler.update()`` then closes the step for both (the GradScaler
recipe for several optimizers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import Tensor

from mmssl.types import ObjectiveOutput

if TYPE_CHECKING:
    from mmssl.objectives.base import Adversary


class AdversaryTraining:
    """Routes ``adversary_loss`` to the adversary's parameters and steps their optimizer.

    Args:
        adversary: what the objective declares (module and optimizer settings).
        optimizer: its prepared AdamW (:func:`mmssl.optim.build_adversary_optimizer`).
        scheduler: its prepared schedule.
        accelerator: the run's accelerator (gradient accumulation, fp16 scaler, processes).

    Raises:
        ValueError: Under FSDP or DeepSpeed, which shard or own the gradients this class computes.
    """

    def __init__(
        self,
        adversary: Adversary,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        accelerator: Accelerator,
    ) -> None:
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise ValueError(
                f"an objective with an adversary ({type(adversary.module).__name__}) trains on one process or "
                f"under DDP, not {accelerator.distributed_type.value}: launch without FSDP/DeepSpeed"
            )
        self.params = [p for p in adversary.module.parameters() if p.requires_grad]
        self.ids = {id(p) for p in self.params}
        self.optimizer, self.scheduler, self.accelerator = optimizer, scheduler, accelerator
        self.grads: list[Tensor | None] | None = None  # summed over the micro-batches of this step

    def accumulate(self, out: ObjectiveOutput) -> Tensor:
        """Add this micro-batch's adversary gradient to the buffer; returns the loss for the main backward.

        Raises:
            ValueError: If the objective returned no ``adversary_loss``, or one that no adversary parameter reaches.
        """
        adv = out.adversary_loss
        if adv is None or not adv.requires_grad:
            raise ValueError(
                "the objective declares an adversary but its ObjectiveOutput.adversary_loss is "
                f"{'None' if adv is None else 'not differentiable'}: return the adversary's loss on every forward"
            )
        acc = self.accelerator
        scaled = adv / acc.gradient_accumulation_steps  # as accelerator.backward scales the main loss
        if acc.scaler is not None:
            scaled = acc.scaler.scale(scaled)
        grads = torch.autograd.grad(scaled, self.params, retain_graph=True, allow_unused=True)
        if self.grads is None:
            self.grads = list(grads)
        else:
            self.grads = [a if b is None else b if a is None else a + b for a, b in zip(self.grads, grads)]
        if acc.num_processes > 1:
            # DDP waits for a gradient on every parameter its outputs reach, adversary_loss's included: a zero-weighted
            # term makes the main backward visit them (their .grad is replaced by install() anyway)
            return out.loss + 0.0 * adv
        return out.loss

    def install(self) -> None:
        """Replace the adversary's ``.grad`` (what the main loss left there) by the buffer, averaged over processes."""
        buffer = self.grads if self.grads is not None else [None] * len(self.params)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, buffer)]
        if self.accelerator.num_processes > 1 and grads:
            flat = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
            grads = [chunk.view_as(g) for chunk, g in zip(flat.split([g.numel() for g in grads]), grads)]
        for p, g in zip(self.params, grads):
            p.grad = g.to(p.dtype)
        self.grads = None

    def clip(self, max_norm: float) -> float:
        """Clip the installed gradient to ``max_norm`` (<= 0: no clipping); returns its norm before clipping.

        With fp16 the trainer's main clip has already unscaled it (``accelerator.unscale_gradients`` unscales every
        prepared optimizer), so this is torch's clip, not Accelerate's (which would unscale twice).
        """
        if not self.params:
            return 0.0
        return float(torch.nn.utils.clip_grad_norm_(self.params, max_norm if max_norm > 0 else float("inf")))

    def step(self, finite: bool) -> None:
        """Step the adversary's optimizer (skipped when the step's gradients are not ``finite``) and its schedule.

        With fp16, the GradScaler decides (it skips a step whose gradient overflowed); call this before the main
        optimizer's step, whose ``scaler.update()`` ends the step for both.
        """
        scaler = self.accelerator.scaler
        if scaler is not None:
            scaler.step(self.optimizer.optimizer)  # the torch optimizer inside Accelerate's wrapper
        elif finite:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]
