"""Worker for tests/test_torchrun.py: one training step (and a few EMA updates) of masked LM, SimCLR's
NT-Xent and data2vec on a fixed *global* batch, each process taking its slice, under Accelerate (DDP
on gloo). Saves the synchronised gradients, losses and EMA teachers of every case to OUT (rank 0) so
the test can compare a 2-process run with a 1-process run of the same global batch.

Masks are drawn once for the global batch with a seeded generator and each process reads its rows:
what is under test is gradient synchronisation, the all-gather of negatives and the global
normalisation of masked losses, not the random draw.

Usage (from the repository root): torchrun --standalone --nproc_per_node N -m tests.distributed_worker OUT
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from unittest import mock

import torch
from accelerate import Accelerator
from transformers import BertConfig, BertForMaskedLM

from domains.image.encoders import ImageEncoderConfig, build_image_encoder
from domains.image.units import image_batch
from domains.text.encoders import HFTextEncoder
from mmssl.masking import bert_mask, random_mask
from mmssl.objectives.base import SSLModel
from mmssl.objectives.data2vec import Data2Vec, Data2VecConfig
from mmssl.objectives.mlm import MaskedLM, MaskedLMConfig
from mmssl.objectives.simclr import SimCLR, SimCLRConfig
from mmssl.trainer import DDP_KWARGS
from mmssl.types import Batch

GLOBAL_BATCH, EMA_STEPS = 8, 3


def rows(batch: Batch, rank: int, world: int) -> Batch:
    """This process's contiguous slice of a global batch (its views and paired batch included)."""
    n = batch.batch_size // world
    sl = slice(rank * n, (rank + 1) * n)

    def cut(v):
        return v[sl] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == batch.batch_size else v

    views = None if batch.views is None else tuple(rows(v, rank, world) for v in batch.views)
    return batch.replace(
        units=batch.units[sl],
        padding_mask=batch.padding_mask[sl],
        special_mask=None if batch.special_mask is None else batch.special_mask[sl],
        extras={k: cut(v) for k, v in batch.extras.items()},
        views=views,
        pair=None if batch.pair is None else rows(batch.pair, rank, world),
    )


def tiny_bert() -> HFTextEncoder:
    cfg = BertConfig(
        vocab_size=80,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return HFTextEncoder(BertForMaskedLM(cfg), SimpleNamespace(mask_token_id=4))


def tiny_vit():
    return build_image_encoder(
        ImageEncoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=4),
        (16, 16),
        channels=1,
    )


def text_batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 80, (GLOBAL_BATCH, 16), generator=g)
    padding = torch.zeros_like(ids, dtype=torch.bool)
    padding[1::2, 12:] = True  # uneven padding: ranks see different numbers of maskable tokens
    special = torch.zeros_like(padding)
    special[:, 0] = True
    return Batch(units=ids, padding_mask=padding, special_mask=special)


def image_views() -> Batch:
    g = torch.Generator().manual_seed(2)
    views = tuple(image_batch(torch.rand(GLOBAL_BATCH, 1, 16, 16, generator=g), 4) for _ in range(2))
    return views[0].replace(views=views)


def run_case(acc: Accelerator, name: str) -> dict:
    rank, world = acc.process_index, acc.num_processes
    torch.manual_seed(0)
    patches = []
    if name == "mlm":
        encoder = tiny_bert()
        objective = MaskedLM(MaskedLMConfig(), encoder)
        batch = text_batch()
        mask, corrupted = bert_mask(
            batch.units, batch.maskable, mask_token_id=4, vocab_size=80, generator=torch.Generator().manual_seed(3)
        )
        n = GLOBAL_BATCH // world
        patches.append(
            mock.patch(
                "mmssl.objectives.mlm.bert_mask",
                lambda *a, **k: (mask[rank * n : (rank + 1) * n], corrupted[rank * n : (rank + 1) * n]),
            )
        )
        local_masked = int(mask[rank * n : (rank + 1) * n].sum())
    elif name == "simclr":
        encoder = tiny_vit()
        objective = SimCLR(SimCLRConfig(projector_hidden_dim=32, projector_dim=16, temperature=0.5), encoder)
        batch, local_masked = image_views(), 0
    else:  # data2vec
        encoder = tiny_vit()
        objective = Data2Vec(
            Data2VecConfig(
                mask="random", mask_prob=0.4, top_k_layers=2, ema_decay=0.9, ema_end_decay=0.99, ema_anneal_steps=10
            ),
            encoder,
        )
        batch = image_views()
        mask = random_mask(batch.maskable, ratio=0.4, generator=torch.Generator().manual_seed(4))
        mask[0, :5] = True  # make the ranks' masked counts differ
        n = GLOBAL_BATCH // world
        patches.append(
            mock.patch("mmssl.objectives.data2vec.random_mask", lambda maskable, **k: mask[rank * n : (rank + 1) * n])
        )
        local_masked = int(mask[rank * n : (rank + 1) * n].sum())
    model = SSLModel(encoder, objective).train()
    for m in model.modules():  # batch norm (SimCLR's projector) on fixed statistics: per-process BN is not under test
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model, optimizer = acc.prepare(model, optimizer)
    local = rows(batch, rank, world)
    for p in patches:
        p.start()
    try:
        record: dict = {}
        for step in range(1, EMA_STEPS + 1):
            out = model(local)
            optimizer.zero_grad()
            acc.backward(out.loss)
            if step == 1:
                record["grads"] = {
                    k: p.grad.detach().clone()
                    for k, p in acc.unwrap_model(model).named_parameters()
                    if p.grad is not None
                }
                record["loss_sum"] = float(acc.reduce(out.loss.detach(), reduction="sum"))
            optimizer.step()
            acc.unwrap_model(model).after_optimizer_step(step, EMA_STEPS)
    finally:
        for p in patches:
            p.stop()
    unwrapped = acc.unwrap_model(model)
    if hasattr(unwrapped.objective, "teacher"):
        flat = torch.cat([p.detach().flatten() for p in unwrapped.objective.teacher.parameters()])
        record["teachers"] = acc.gather(flat[None])  # [world, P]: one row per process
    record["masked_per_process"] = acc.gather(torch.tensor([local_masked]))
    return record


def main() -> None:
    out = sys.argv[1]
    acc = Accelerator(cpu=True, kwargs_handlers=[DDP_KWARGS])  # the trainer's own DDP settings
    results = {name: run_case(acc, name) for name in ("mlm", "simclr", "data2vec")}
    if acc.is_main_process:
        torch.save({"world": acc.num_processes, **results}, out)
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
