"""data2vec: targets and loss against an independent computation on transformers' own BERT, the EMA
teacher's schedule and isolation, several masks per teacher pass, every mask generator, learning."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM

from domains.image.encoders import ImageEncoderConfig, build_image_encoder
from domains.image.units import image_batch
from domains.text.encoders import HFTextEncoder
from mmssl.masking import bert_mask
from mmssl.objectives.base import SSLModel
from mmssl.objectives.data2vec import Data2Vec, Data2VecConfig, normalise_units, repeat_batch
from mmssl.types import Batch
from tests.fitting import first_last, fit

V, T, B = 100, 20, 4


def _bert(layers: int = 3) -> HFTextEncoder:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return HFTextEncoder(BertForMaskedLM(cfg), SimpleNamespace(mask_token_id=4))


def _text_batch(pad: bool = False) -> Batch:
    ids = torch.randint(5, V, (B, T), generator=torch.Generator().manual_seed(1))
    special = torch.zeros(B, T, dtype=torch.bool)
    special[:, 0] = True
    padding = torch.zeros(B, T, dtype=torch.bool)
    if pad:
        padding[:2, 14:] = True
    return Batch(units=ids, padding_mask=padding, special_mask=special)


def _vit():
    torch.manual_seed(0)
    return build_image_encoder(
        ImageEncoderConfig(hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64, patch_size=4),
        (16, 16),
        channels=1,
    )


def _image_batch():
    return image_batch(torch.rand(B, 1, 16, 16, generator=torch.Generator().manual_seed(0)), 4)


def test_instance_norm_matches_torch_and_ignores_padding() -> None:
    x = torch.randn(3, 7, 5)
    none = torch.zeros(3, 7, dtype=torch.bool)
    ref = F.instance_norm(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(normalise_units(x, none, "instance"), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(normalise_units(x, none, "layer"), F.layer_norm(x, (5,)))
    padded = torch.cat([x, torch.randn(3, 4, 5) * 100], 1)
    mask = torch.cat([none, torch.ones(3, 4, dtype=torch.bool)], 1)
    out = normalise_units(padded, mask, "instance")
    torch.testing.assert_close(out[:, :7], ref, rtol=1e-4, atol=1e-5)
    assert not out[:, 7:].any()


def test_targets_and_loss_equal_an_independent_computation_on_bert() -> None:
    """Teacher = student at step 0: targets from BertModel's own hidden states, loss by hand."""
    enc = _bert()
    objective = Data2Vec(Data2VecConfig(mask="bert", top_k_layers=2), enc)
    batch = _text_batch(pad=True)
    torch.manual_seed(5)
    out = objective(enc, batch)

    bert = enc.model.bert
    attention = (~batch.padding_mask).long()
    with torch.no_grad():
        states = bert(input_ids=batch.units, attention_mask=attention, output_hidden_states=True).hidden_states
    keep = attention[..., None].float()

    def inorm(h):  # instance norm over each sample's real tokens, computed per sample without padding
        rows = []
        for i in range(B):
            n = int(attention[i].sum())
            rows.append(F.pad(F.instance_norm(h[i : i + 1, :n].transpose(1, 2)).transpose(1, 2), (0, 0, 0, T - n)))
        return torch.cat(rows)

    targets = (inorm(states[-1]) + inorm(states[-2])) / 2 * keep
    torch.manual_seed(5)
    mask, corrupted = bert_mask(batch.units, batch.maskable, mask_token_id=4, vocab_size=V, mask_prob=0.15)
    student = bert(input_ids=corrupted, attention_mask=attention).last_hidden_state
    pred = objective.head(student[mask])
    ref = F.mse_loss(pred, targets[mask])
    assert mask.any()
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-4)
    out.loss.backward()
    assert enc.model.bert.embeddings.word_embeddings.weight.grad is not None
    assert all(p.grad is None for p in objective.teacher.parameters())  # the teacher takes no gradient


def test_top_k_and_mask_errors_name_the_key() -> None:
    enc = _bert(layers=2)
    with pytest.raises(ValueError, match="top_k_layers=3 but the encoder has 2 layers"):
        Data2Vec(Data2VecConfig(top_k_layers=3), enc)(enc, _text_batch())
    vit = _vit()
    with pytest.raises(ValueError, match="mask=bert needs an encoder with a mask token"):
        Data2Vec(Data2VecConfig(mask="bert"), vit)
    with pytest.raises(ValueError, match="mask=block needs a 2-D unit grid"):
        Data2Vec(Data2VecConfig(mask="block", top_k_layers=2), enc)(enc, _text_batch())
    with pytest.raises(ValueError, match="objective.mask_prob"):
        Data2VecConfig(mask_prob=1.5)


def test_ema_teacher_anneals_and_stays_in_eval_mode() -> None:
    enc = _vit()
    objective = Data2Vec(Data2VecConfig(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_steps=10, top_k_layers=2), enc)
    model = SSLModel(enc, objective).train()
    assert not objective.teacher.module.training  # no dropout in the teacher, ever
    before = {k: v.clone() for k, v in objective.teacher.module.state_dict().items()}
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    model.after_optimizer_step(1, 100)  # first update uses tau_0
    for (name, t), s in zip(objective.teacher.module.named_parameters(), enc.parameters()):
        torch.testing.assert_close(t, 0.9 * before[name] + 0.1 * s)
    assert float(objective.teacher.momentum) == pytest.approx(0.9)
    model.after_optimizer_step(6, 100)  # step 6 updates with the value after 5 steps: halfway
    assert float(objective.teacher.momentum) == pytest.approx(0.945)
    model.after_optimizer_step(50, 100)
    assert float(objective.teacher.momentum) == pytest.approx(0.99)


def test_several_masks_share_one_teacher_pass() -> None:
    enc = _vit()
    objective = Data2Vec(Data2VecConfig(mask="block", mask_prob=0.5, num_masks=3, top_k_layers=2, min_block=2), enc)
    batch = _image_batch()
    teacher_rows, student_rows = [], []
    objective.teacher.module.encode = (lambda f: lambda b, **kw: teacher_rows.append(b.batch_size) or f(b, **kw))(
        objective.teacher.module.encode
    )
    enc.encode_at = (lambda f: lambda b, p, mask=None: student_rows.append((b.batch_size, p)) or f(b, p, mask=mask))(
        enc.encode_at
    )
    out = objective(enc, batch)
    assert teacher_rows == [B] and student_rows[0][0] == 3 * B
    masks = student_rows[0][1].view(3, B, -1)
    assert not torch.equal(masks[0], masks[1])  # each copy has its own mask
    assert torch.isfinite(out.loss) and 0.3 < float(out.logs["masked_fraction"]) < 0.7


def test_repeat_batch_repeats_per_sample_tensors_only() -> None:
    batch = _image_batch()
    batch = batch.replace(extras={**batch.extras, "labels": torch.arange(B)})
    rep = repeat_batch(batch, 2)
    assert rep.units.shape[0] == 2 * B and rep.grid == batch.grid
    assert rep.extras["labels"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


@pytest.mark.parametrize("mask", ["span", "random"])
def test_frame_and_node_style_masks(mask: str) -> None:
    enc = _vit()
    objective = Data2Vec(
        Data2VecConfig(mask=mask, mask_prob=0.3 if mask == "random" else 0.1, span_length=3, top_k_layers=2), enc
    )
    out = objective(enc, _image_batch())
    assert torch.isfinite(out.loss) and float(out.logs["masked_fraction"]) > 0.05


@pytest.mark.parametrize("loss", ["mse", "smooth_l1"])
def test_data2vec_loss_decreases_on_images(loss: str) -> None:
    torch.manual_seed(0)
    enc = _vit()
    objective = Data2Vec(
        Data2VecConfig(
            mask="block",
            mask_prob=0.5,
            min_block=2,
            top_k_layers=2,
            loss=loss,
            ema_decay=0.99,
            ema_end_decay=0.999,
            ema_anneal_steps=50,
        ),
        enc,
    )
    first, last = first_last(fit(SSLModel(enc, objective).train(), _image_batch(), 40, lr=2e-3))
    assert last < 0.5 * first, (first, last)
