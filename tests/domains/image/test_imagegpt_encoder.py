"""ImageGPT on the image domain: the palette, the quantiser, causality, the load-time checks, the export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoImageProcessor, AutoModel, ImageGPTImageProcessor, ImageGPTModel

from domains.image.data import ImageArrays
from domains.image.domain import ImageRows, image_collate
from domains.image.encoders import ImageEncoderConfig
from domains.image.imagegpt import (
    ImageGPTEncoder,
    build_imagegpt_encoder,
    palette_processor,
    pixel_colours,
)
from mmssl.config import ConfigError
from mmssl.export import write_export
from mmssl.objectives.base import SSLModel
from mmssl.objectives.imagegpt import ImageGPTObjective, ImageGPTObjectiveConfig
from mmssl.recipe import load_recipe
from mmssl.registry import DOMAINS
from mmssl.types import Batch
from tests.conftest import TINY_IMAGE


def smooth_arrays(n: int = 8, channels: int = 1, seed: int = 0) -> ImageArrays:
    """``n`` smooth random 28x28 uint8 images (4x4 noise upsampled)."""
    noise = torch.rand(n, channels, 4, 4, generator=torch.Generator().manual_seed(seed))
    images = F.interpolate(noise, size=(28, 28), mode="bilinear").mul(255).round().to(torch.uint8)
    return ImageArrays(images=images, source="smooth test images")


def tiny_config(**changes: object) -> ImageEncoderConfig:
    """A 2-layer, 32-wide ImageGPT on 2x2 patches (14x14 = 196 tokens) with 8 colours."""
    sizes = dict(arch="imagegpt", patch_size=2, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    return ImageEncoderConfig(**{**sizes, "palette_size": 8, **changes})


def tiny_encoder(tmp_path: Path, arrays: ImageArrays | None = None, seed: int = 0, **changes: object):
    """``(encoder, processor, batch)``: a fresh ImageGPT with the palette of ``arrays`` and their collated batch."""
    arrays = arrays or smooth_arrays()
    cfg = tiny_config(**changes)
    processor = palette_processor(arrays, cfg, tmp_path, seed=0)
    torch.manual_seed(seed)
    encoder = build_imagegpt_encoder(cfg, processor).eval()
    rows = ImageRows(arrays)
    batch = image_collate(processor, with_labels=False)([rows[i] for i in range(len(rows))])
    return encoder, processor, batch


def test_palette_is_k_means_of_the_training_colours(tmp_path: Path) -> None:
    """Grey data give a palette of equal RGB channels in [-1, 1], darkest first, the same for the same seed."""
    arrays = smooth_arrays()
    cfg = tiny_config()
    a = palette_processor(arrays, cfg, tmp_path / "a", seed=0).clusters
    b = palette_processor(arrays, cfg, tmp_path / "b", seed=0).clusters
    assert a.shape == (8, 3) and torch.equal(a, b)
    assert torch.allclose(a[:, :1].expand(-1, 3), a) and bool((a[1:, 0] > a[:-1, 0]).all())
    colours = pixel_colours(arrays.images, 2)[:, 0]
    assert colours.min() <= a.min() and a.max() <= colours.max() and len(colours) == 8 * 14 * 14
    # 2x2 box average in the processor's scale: (pixel / 255 - 0.5) / 0.5
    first = arrays.images[0, 0, :2, :2].float().div(255).sub(0.5).div(0.5).mean()
    assert colours[0].item() == pytest.approx(first.item(), abs=1e-6)


def test_a_resumed_run_reuses_its_saved_palette(tmp_path: Path) -> None:
    first = palette_processor(smooth_arrays(seed=0), tiny_config(), tmp_path, seed=0)
    first.save_pretrained(str(tmp_path / "processor"))
    again = palette_processor(smooth_arrays(seed=1), tiny_config(), tmp_path, seed=5)  # other data, other seed
    assert torch.equal(again.clusters, first.clusters)


def test_quantiser_maps_each_unit_to_the_nearest_palette_colour(tmp_path: Path) -> None:
    """Written out: each 2x2 patch's mean colour in [-1, 1], then the palette entry at the least squared distance."""
    encoder, processor, batch = tiny_encoder(tmp_path)
    ids = encoder.unit_ids(batch)
    images = torch.stack([ImageRows(smooth_arrays())[i]["image"] for i in range(8)]).float()
    palette = processor.clusters.tolist()
    for b in range(2):
        for t in (0, 17, 100, 195):
            r, c = divmod(t, 14)
            grey = (
                sum((images[b, 0, 2 * r + i, 2 * c + j].item() / 255 - 0.5) / 0.5 for i in (0, 1) for j in (0, 1)) / 4
            )
            dists = [sum((grey - p[k]) ** 2 for k in range(3)) for p in palette]
            assert ids[b, t].item() == min(range(len(palette)), key=dists.__getitem__)


def test_an_early_output_never_reads_a_later_pixel(tmp_path: Path) -> None:
    """Changing unit k changes no logit at units <= k (they read units < t only) and changes the one at k + 1."""
    encoder, _, batch = tiny_encoder(tmp_path)
    k = 60
    units = batch.units.clone()
    units[:, k] = -units[:, k]  # another colour: mirror the patch around grey
    changed = batch.replace(units=units)
    assert not torch.equal(encoder.unit_ids(changed)[:, k], encoder.unit_ids(batch)[:, k])
    with torch.no_grad():
        before = encoder.prediction_head()(encoder.encode_from_start(batch)[0])
        after = encoder.prediction_head()(encoder.encode_from_start(changed)[0])
    torch.testing.assert_close(before[:, : k + 1], after[:, : k + 1])
    assert not torch.allclose(before[:, k + 1], after[:, k + 1])


def test_more_colours_than_the_data_has_is_refused(tmp_path: Path) -> None:
    greys = torch.tensor([0, 60, 120, 180, 240], dtype=torch.uint8)
    arrays = ImageArrays(images=greys[torch.arange(4 * 28 * 28) % 5].view(4, 1, 28, 28), source="five greys")
    with pytest.raises(ValueError, match="encoder.palette_size=8 is larger than the 5 distinct pixel colours"):
        palette_processor(arrays, tiny_config(patch_size=1), tmp_path, seed=0)


def tiny_recipe(tiny_images: Path, *overrides: str):
    return load_recipe("imagegpt", [*TINY_IMAGE, f"data.path={tiny_images}", *overrides])


@pytest.mark.parametrize("layer", [0, 5])
def test_a_probe_layer_outside_the_network_is_refused(layer: int, tiny_images: Path) -> None:
    with pytest.raises(ConfigError, match=rf"encoder.probe_layer={layer} must be a layer in \[1, encoder.num_layers"):
        tiny_recipe(tiny_images, f"encoder.probe_layer={layer}", "encoder.num_layers=4")


def test_more_tokens_than_positions_is_refused(tiny_images: Path, tmp_path: Path) -> None:
    """28x28 images in 1x1 units are 784 tokens: refused against a 196-position context before training."""
    recipe = tiny_recipe(tiny_images, "encoder.patch_size=1", "encoder.max_positions=196")
    with pytest.raises(ValueError, match="make 784 palette tokens .* more than encoder.max_positions=196"):
        DOMAINS.get("image").pretrain_data(recipe, tmp_path, 0, 1)


def test_more_tokens_than_positions_is_refused_at_load_for_prepared_data() -> None:
    """Where the image size is known without loading (a prepared dataset's header), the recipe itself is refused."""
    from mmssl.datasets import is_prepared

    if not is_prepared("fashion-mnist"):
        pytest.skip("fashion-mnist is not prepared on this machine (mmssl data prepare fashion-mnist)")
    with pytest.raises(ConfigError, match="make 784 palette tokens .* more than encoder.max_positions=196"):
        load_recipe("imagegpt", ["encoder.patch_size=1", "encoder.max_positions=196"])


def test_the_objective_needs_an_imagegpt_encoder(tiny_images: Path) -> None:
    with pytest.raises(ConfigError, match="objective.name=imagegpt needs .* set encoder.arch=imagegpt"):
        tiny_recipe(tiny_images, "encoder.arch=vit")


def reference_features(model: ImageGPTModel, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """iGPT's probe features with transformers alone: the start token (the last id) then the ids but the last, and
    the mean over positions of block ``layer``'s normalised input (``ln_1``; ``ln_f`` after the last block)."""
    start = torch.full_like(ids[:, :1], model.config.vocab_size - 1)
    hidden = model(input_ids=torch.cat([start, ids[:, :-1]], 1), output_hidden_states=True).hidden_states[layer]
    return (hidden if layer == model.config.n_layer else model.h[layer].ln_1(hidden)).mean(1)


@pytest.mark.parametrize("layer", [1, 2])
def test_the_export_loads_with_auto_classes_and_gives_the_same_features(
    layer: int, tmp_path: Path, tiny_images: Path
) -> None:
    """Offline round trip: AutoImageProcessor quantises raw images to the encoder's ids, AutoModel's pooled
    layer is the encoder's summary, and the domain loads the export back to the same outputs."""
    arrays = smooth_arrays(channels=1)
    encoder, processor, batch = tiny_encoder(tmp_path / "run", arrays, patch_size=1, max_positions=784)
    encoder.probe_layer = layer
    recipe = tiny_recipe(tiny_images, "encoder.patch_size=1", "encoder.max_positions=784")
    model = SSLModel(encoder, ImageGPTObjective(ImageGPTObjectiveConfig(), encoder))
    export = write_export(model, processor, recipe, tmp_path / "export", None, 0)

    auto_processor = AutoImageProcessor.from_pretrained(str(export))
    auto_model = AutoModel.from_pretrained(str(export)).eval()
    assert isinstance(auto_processor, ImageGPTImageProcessor) and isinstance(auto_model, ImageGPTModel)
    ids = auto_processor([img for img in arrays.images], return_tensors="pt").input_ids
    assert torch.equal(ids, encoder.unit_ids(batch))
    with torch.no_grad():
        ours = encoder.encode(batch).summary
        torch.testing.assert_close(reference_features(auto_model, ids, layer), ours)
        loaded = DOMAINS.get("image").load_encoder(export).eval()
        assert isinstance(loaded, ImageGPTEncoder) and loaded.probe_layer == layer
        torch.testing.assert_close(loaded.encode(batch).hidden, encoder.encode(batch).hidden)


def test_rgb_units_are_quantised_in_three_channels(tmp_path: Path) -> None:
    encoder, processor, batch = tiny_encoder(tmp_path, smooth_arrays(channels=3), palette_size=8)
    colours = batch.units.unflatten(-1, (3, 4)).mean(-1)  # [B, T, 3] mean colour of each 2x2 patch
    nearest = torch.cdist(colours.double(), processor.clusters.double()).argmin(-1)
    assert torch.equal(encoder.unit_ids(batch), nearest)
    assert isinstance(batch, Batch) and not np.allclose(processor.clusters[:, 0], processor.clusters[:, 1])
