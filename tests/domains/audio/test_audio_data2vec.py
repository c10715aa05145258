"""data2vec on waveforms: the Data2VecAudio encoder, masks and targets on the conv-frame grid, learning on a fixed
batch, and an export that transformers' Data2VecAudioModel reloads to the trained encoder's hidden states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, Data2VecAudioModel

from domains.audio.encoders import AudioEncoderConfig, Wav2Vec2Encoder, build_audio_encoder
from mmssl.checkpoint import latest_checkpoint
from mmssl.model import build_model, load_run_recipe, load_weights
from mmssl.objectives.base import SSLModel
from mmssl.objectives.data2vec import Data2Vec, Data2VecConfig, output_maskable
from mmssl.pretrain import pretrain
from mmssl.registry import DOMAINS
from mmssl.types import Batch
from tests.domains.audio.audio_fixtures import TINY_AUDIO, TINY_BY_RECIPE
from tests.fitting import first_last, fit

TINY = AudioEncoderConfig(
    arch="data2vec_audio",
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    conv_dim=(16,) * 7,
    num_conv_pos_layers=2,
    conv_pos_kernel_size=5,
    num_conv_pos_embedding_groups=2,
    do_stable_layer_norm=False,
)


def _encoder() -> Wav2Vec2Encoder:
    torch.manual_seed(0)
    return build_audio_encoder(TINY)


def _waves(pad: bool = False) -> Batch:
    """4 normalised waveforms of 0.5 s (8000 samples = 24 conv frames); with ``pad`` the last two are 0.3 s."""
    waves = torch.randn(4, 8000, generator=torch.Generator().manual_seed(0))
    padding = torch.zeros(4, 8000, dtype=torch.bool)
    if pad:
        padding[2:, 4800:] = True
        waves = waves.masked_fill(padding, 0.0)
    return Batch(units=waves, padding_mask=padding)


def test_config_is_data2vec_audio_and_rejects_a_pre_ln_layout() -> None:
    enc = _encoder()
    assert isinstance(enc.model, Data2VecAudioModel) and enc.prediction_head() is None
    assert len(enc.model.encoder.pos_conv_embed.layers) == 2 and enc.model.config.conv_pos_kernel_size == 5
    with pytest.raises(ValueError, match="do_stable_layer_norm=false"):
        AudioEncoderConfig(arch="data2vec_audio")  # the default do_stable_layer_norm=true is wav2vec2's LARGE layout


def test_all_layers_and_frame_masks() -> None:
    """``layers`` = embedding output + one per block, the last = ``hidden``; a mask on the conv-frame grid replaces
    exactly those frames' projected features by ``masked_spec_embed`` before the transformer."""
    enc = _encoder().eval()
    batch = _waves(pad=True)
    out = enc.encode(batch, all_layers=True)
    assert out.hidden.shape == (4, 24, 32) and len(out.layers) == 3
    torch.testing.assert_close(out.layers[-1], out.hidden)
    assert out.padding_mask[2:, 15:].all() and not out.padding_mask[:2].any() and not out.padding_mask[2:, :14].any()
    mask = torch.zeros(4, 24, dtype=torch.bool)
    mask[:, 3:8] = True
    seen = []
    hook = enc.model.encoder.register_forward_hook(lambda module, args, kwargs: seen.append(args[0].clone()))
    with torch.no_grad():
        enc.encode(batch)
        enc.encode(batch, mask)
    hook.remove()
    plain, masked = seen
    assert torch.equal(masked[~mask], plain[~mask])
    assert torch.equal(masked[mask], enc.model.masked_spec_embed.expand(int(mask.sum()), -1))


def test_objective_masks_and_normalises_on_the_frame_grid() -> None:
    """Spans are drawn on the 24 conv frames (never on padding frames); targets are instance-normed over real frames."""
    enc = _encoder()
    objective = Data2Vec(Data2VecConfig(mask="span", mask_prob=0.2, span_length=3, top_k_layers=2), enc)
    batch = _waves(pad=True)
    padding = enc.output_padding_mask(batch)
    maskable = output_maskable(batch, padding)
    assert maskable.shape == (4, 24) and torch.equal(maskable, ~padding)
    mask, _ = objective.make_mask(enc, batch, maskable)
    assert mask.shape == (4, 24) and not (mask & padding).any() and mask.any(1).all()
    out = objective(enc, batch)
    assert torch.isfinite(out.loss) and 0.2 < float(out.logs["masked_fraction"]) < 1.0
    with pytest.raises(ValueError, match="mask=span or mask=random"):
        Data2Vec(Data2VecConfig(mask="block", top_k_layers=2), enc)(enc, batch)


def test_data2vec_loss_decreases_on_a_fixed_audio_batch() -> None:
    enc = _encoder()
    objective = Data2Vec(
        Data2VecConfig(
            mask="span",
            mask_prob=0.1,
            span_length=4,
            top_k_layers=2,
            ema_decay=0.99,
            ema_end_decay=0.999,
            ema_anneal_steps=30,
        ),
        enc,
    )
    # the same spans every step: a fixed batch the student can fit
    losses = fit(SSLModel(enc, objective).train(), _waves(pad=True), 30, lr=2e-3, seed=lambda step: 0)
    first, last = first_last(losses)
    assert last < 0.5 * first, (first, last)


@pytest.fixture(scope="module")
def data2vec_run(tmp_path_factory: pytest.TempPathFactory, audio_folder: Path) -> Path:
    overrides = [*TINY_AUDIO, f"data.path={audio_folder}", *TINY_BY_RECIPE["data2vec_audio"], "train.max_steps=3"]
    return pretrain("data2vec_audio", overrides, tmp_path_factory.mktemp("d2v") / "run")


def test_export_reloads_with_data2vec_audio_model_to_the_trained_hidden_states(data2vec_run: Path) -> None:
    """The trained encoder (the last checkpoint, as the trainer saved it) and ``Data2VecAudioModel.from_pretrained``
    on the export, fed by the export's own feature extractor, give the same hidden states at every layer."""
    recipe = load_run_recipe(data2vec_run)
    trained = build_model(recipe, DOMAINS.get("audio").load_processor(data2vec_run))
    load_weights(trained, latest_checkpoint(data2vec_run) / "model.safetensors")
    encoder = trained.encoder.eval()
    export = data2vec_run / "export"
    model = Data2VecAudioModel.from_pretrained(export).eval()
    extractor = AutoFeatureExtractor.from_pretrained(export)
    waves = [torch.randn(n, generator=torch.Generator().manual_seed(n)).numpy() for n in (16000, 11000)]
    inputs = extractor(waves, sampling_rate=16000, padding=True, return_tensors="pt")  # the second one padded
    with torch.no_grad():
        ref = model(**inputs, output_hidden_states=True)
        ours = encoder.encode(
            Batch(units=inputs["input_values"], padding_mask=inputs["attention_mask"] == 0), all_layers=True
        )
    torch.testing.assert_close(ours.hidden, ref.last_hidden_state, atol=1e-4, rtol=0)
    for a, b in zip(ours.layers, ref.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    classifier = AutoModelForAudioClassification.from_pretrained(export, num_labels=3)
    assert type(classifier).__name__ == "Data2VecAudioForSequenceClassification"
    with torch.no_grad():
        assert classifier(**inputs).logits.shape == (2, 3)
