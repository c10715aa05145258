"""HFTextEncoder: the last layer evaluated at the read positions only equals the full pass."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM

from domains.text.encoders import HFTextEncoder, attention_core
from mmssl.types import Batch

V, T, B = 50, 20, 5


def _encoder(attn: str) -> HFTextEncoder:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        type_vocab_size=2,
        attn_implementation=attn,
    )
    return HFTextEncoder(BertForMaskedLM(cfg), SimpleNamespace(mask_token_id=4)).eval()


def _batch(padded: bool) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    pad = torch.zeros(B, T, dtype=torch.bool)
    if padded:
        pad[0, 12:] = pad[3, 5:] = True
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, T // 2 :] = 1
    batch = Batch(units=torch.randint(5, V, (B, T), generator=g), padding_mask=pad, extras={"token_type_ids": types})
    positions = (torch.rand(B, T, generator=g) < 0.25) & ~pad
    positions[1] = False  # a row with nothing to read
    positions[2, :] = ~pad[2]  # a row read everywhere
    mask = (torch.rand(B, T, generator=g) < 0.15) & ~pad
    return batch, positions, mask


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [False, True])
def test_encode_at_equals_full_encode_and_its_gradients(attn: str, padded: bool) -> None:
    enc = _encoder(attn)
    batch, positions, mask = _batch(padded)
    weights = torch.randn(int(positions.sum()), 32, generator=torch.Generator().manual_seed(5))

    sparse = enc.encode_at(batch, positions, mask)
    (sparse * weights).sum().backward()
    sparse_grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    enc.zero_grad()

    full = enc.encode(batch, mask).hidden[positions]
    (full * weights).sum().backward()
    torch.testing.assert_close(sparse, full, rtol=1e-5, atol=1e-5)
    full_grads = {n: p.grad for n, p in enc.named_parameters() if p.grad is not None}
    assert sparse_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_attention_core_runs_in_float32_under_cpu_autocast() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=g).to(torch.bfloat16) for _ in range(3))
    keep = torch.rand(2, 1, 1, 16, generator=g) > 0.2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention_core(q, k, v, keep, 0.0, 8**-0.5)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=keep, scale=8**-0.5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # outside CPU bf16 it is plain SDPA in the given dtype
    assert attention_core(q.float(), k.float(), v.float(), None, 0.0, 0.5).dtype == torch.float32


def test_encode_at_under_bf16_autocast_matches_the_full_pass() -> None:
    enc = _encoder("sdpa")
    batch, positions, mask = _batch(padded=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sparse = enc.encode_at(batch, positions, mask).float()
        full = enc.encode(batch, mask).hidden[positions].float()
    # the same computation up to bf16 rounding (mmssl's attention core is float32, transformers' bf16)
    torch.testing.assert_close(sparse, full, rtol=0.05, atol=0.05)
    assert (sparse - full).abs().mean() < 0.01


def test_encode_at_runs_the_last_feed_forward_on_the_read_units_only() -> None:
    enc = _encoder("sdpa")
    batch, positions, mask = _batch(padded=False)
    rows = []
    layers = enc.model.bert.encoder.layer
    hooks = [
        layer.intermediate.dense.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[:-1])) for layer in layers
    ]
    out = enc.encode_at(batch, positions, mask)
    for h in hooks:
        h.remove()
    assert out.shape == (int(positions.sum()), 32)
    assert rows[:-1] == [torch.Size([B, T])] * (len(layers) - 1)
    assert rows[-1] == torch.Size([int(positions.sum())])


def test_encode_at_reads_nothing() -> None:
    enc = _encoder("sdpa")
    batch, _, mask = _batch(padded=True)
    out = enc.encode_at(batch, torch.zeros(B, T, dtype=torch.bool), mask)
    assert out.shape == (0, 32)
