"""Tiny encoders, image batches and shared checks for the pixel-decoder objectives (DAE, VAE, context encoder):
8 smooth 28x28 grey images cut into 4x4 patches (a 7x7 grid of 16-feature units), standardised as the image domain
does, with their [0, 1] pixels in ``extras[Extra.PIXELS]``."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from domains.image.encoders import ImageEncoderConfig, build_image_encoder
from domains.image.resnet import SmallResNet
from domains.image.units import image_batch
from mmssl.encoder import Encoder
from mmssl.objectives.base import SSLModel
from mmssl.types import Batch
from tests.fitting import first_last, fit

B, SIZE, PATCH = 8, 28, 4
MEAN, STD = 0.3, 0.35  # the standardisation of the test images (the image domain's: the training set's)


def resnet(seed: int = 0) -> Encoder:
    """A ResNet-18 of width 4 (32 features on a 4x4 map of 28x28 images)."""
    torch.manual_seed(seed)
    return build_image_encoder(ImageEncoderConfig(arch="resnet", resnet_width=4), (SIZE, SIZE), channels=1)


def vit(seed: int = 0) -> Encoder:
    """A 2-layer ViT of width 32 on the 7x7 patch grid."""
    torch.manual_seed(seed)
    cfg = ImageEncoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=PATCH)
    return build_image_encoder(cfg, (SIZE, SIZE), channels=1)


def pixels(seed: int = 0) -> Tensor:
    """``[B, 1, 28, 28]`` smooth images in [0, 1] (7x7 noise upsampled)."""
    noise = torch.rand(B, 1, 7, 7, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)


def batch_of(images: Tensor) -> Batch:
    """Standardised patch units of ``images`` with the [0, 1] pixels in ``extras["pixels"]`` (the domain's collate)."""
    return image_batch((images - MEAN) / STD, PATCH, pixels=images)


def check_loss_decreases(build: Callable[[], SSLModel], steps: int = 40, lr: float = 2e-3, floor: float = 0.0) -> None:
    """The loss on one batch falls by 20% of its distance to ``floor`` (its smallest possible value) in ``steps``
    Adam steps (new noise every step)."""
    model = build()
    losses = fit(model, batch_of(pixels(0)), steps, lr=lr, optimizer=torch.optim.Adam, seed=lambda step: step)
    first, last = first_last(losses)
    assert last - floor < 0.8 * (first - floor), (first, last, floor)


def train_steps(model: SSLModel, optimizer: torch.optim.Optimizer, steps: range) -> list[float]:
    """One optimizer step per ``step`` on its own batch and random draw; the losses."""
    losses = []
    for step in steps:
        torch.manual_seed(step)
        loss = model(batch_of(pixels(step))).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step(step, 6)
        losses.append(loss.item())
    return losses


def check_resumes_exactly(build: Callable[[int], SSLModel]) -> dict[str, Tensor]:
    """Three steps, a checkpoint, three more; a model built from another seed that loads the checkpoint takes the
    same three steps; returns the checkpoint's state dict."""
    model = build(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_steps(model, optimizer, range(1, 4))
    state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    uninterrupted = train_steps(model, optimizer, range(4, 7))
    resumed = build(5)
    resumed.load_state_dict(state)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-3)
    resumed_optimizer.load_state_dict(opt_state)
    assert train_steps(resumed, resumed_optimizer, range(4, 7)) == uninterrupted
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))
    return state


def check_export_reloads_the_features(model: SSLModel, tmp_path: Path) -> Tensor:
    """After a training step, the ResNet export loaded with ``SmallResNet.from_pretrained`` (torch and huggingface_hub
    only) gives the encoder's pooled features; returns the loaded model's pooled features of ``pixels(9)``."""
    train_steps(model, torch.optim.AdamW(model.parameters(), lr=1e-3), range(1, 2))
    model.eval()
    model.encoder.export(tmp_path)
    images = pixels(9)
    loaded = SmallResNet.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        features = loaded((images - MEAN) / STD).mean((2, 3))
        torch.testing.assert_close(features, model.encoder.encode(batch_of(images)).pooled(), rtol=1e-5, atol=1e-5)
    return features
