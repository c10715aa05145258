"""ImageGPT (Chen et al. 2020, "Generative Pretraining from Pixels") on the image domain's units.

The image domain gives normalised ``P x P`` patch units on a grid. For ``encoder.arch=imagegpt`` its processor is
transformers' own ``ImageGPTImageProcessor``, whose ``clusters`` hold the palette: ``encoder.palette_size`` k-means
colours of a sample of the training pixels, fitted once at the start of a run (:func:`palette_processor`, saved in
``RUN/processor`` and reused on resume) in the processor's ``[-1, 1]`` pixel scale (mean = std = 0.5). The encoder
quantises its units itself (:meth:`ImageGPTEncoder.unit_ids`): each unit's pixels are averaged into one colour
(``P = 1`` keeps every pixel, ``P = 2`` box-downsamples 28x28 to 14x14, as the paper trains on downsampled
images) and mapped to the nearest palette entry, as the processor maps a pixel. So the objective reads ids the
encoder gives (:meth:`mmssl.encoder.Encoder.encode_from_start`) and knows no images, and the export is the plain
``ImageGPTForCausalImageModeling`` + ``ImageGPTImageProcessor`` pair the Auto classes load.

Grey images are read as RGB (the grey value in all three channels), as the processor reads them
(``do_convert_rgb``): its quantiser works on 3 channels, and a nearest grey stays nearest in three equal channels.

Probe features (sec. 3.3 of the paper): ``f^l = mean_t layer_norm(h^l_t)``, the normalised input of block ``l``
(its ``ln_1``; ``ln_f`` after the last block) pooled over the sequence, at ``encoder.probe_layer`` (the paper finds
the best layer near the middle of the network).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ImageGPTConfig, ImageGPTForCausalImageModeling, ImageGPTImageProcessor
from transformers.models.imagegpt.modeling_imagegpt import ImageGPTModel

from domains.image.data import ImageArrays
from domains.image.encoders import ImageEncoderConfig
from mmssl.encoder import Encoder
from mmssl.types import Batch, EncoderOutput

PALETTE_CHANNELS = 3  # ImageGPTImageProcessor quantises RGB pixels; grey is read as three equal channels
PALETTE_IMAGES = 10_000  # images the palette's pixels are drawn from (a random subset of the training images)
PALETTE_SAMPLE = 200_000  # pixels the k-means reads (iGPT fits its 512 colours on a sample of ImageNet pixels)
PROCESSOR_FILE = "preprocessor_config.json"


# ---------------------------------------------------------------------------- the palette
def pixel_colours(images: Tensor, patch_size: int) -> Tensor:
    """uint8 ``[N, C, H, W]`` images -> ``[N * H/P * W/P, 3]`` mean colour of each ``P x P`` patch in ``[-1, 1]``."""
    x = images.float().div(127.5).sub(1.0)  # the processor's scale: (pixel / 255 - 0.5) / 0.5
    x = F.avg_pool2d(x, patch_size) if patch_size > 1 else x
    x = x.expand(-1, PALETTE_CHANNELS, -1, -1) if x.shape[1] == 1 else x
    return x.permute(0, 2, 3, 1).reshape(-1, PALETTE_CHANNELS)


def fit_palette(colours: Tensor, size: int, seed: int, source: str = "the training images") -> Tensor:
    """k-means of ``colours`` (``[M, 3]``, a sample of them) into a ``[size, 3]`` palette, darkest first.

    Raises:
        ValueError: If the sample has fewer distinct colours than ``size``.
    """
    from sklearn.cluster import MiniBatchKMeans

    g = torch.Generator().manual_seed(seed)
    sample = colours[torch.randperm(len(colours), generator=g)[:PALETTE_SAMPLE]].numpy()
    distinct = len(np.unique(sample, axis=0))
    if size > distinct:
        raise ValueError(
            f"encoder.palette_size={size} is larger than the {distinct} distinct pixel colours of {source}: "
            f"k-means cannot fill {size} clusters; lower encoder.palette_size"
        )
    km = MiniBatchKMeans(n_clusters=size, random_state=seed, n_init=3, batch_size=4096).fit(sample)
    centres = km.cluster_centers_.astype(np.float32)
    return torch.from_numpy(centres[np.argsort(centres.sum(1), kind="stable")])


def palette_ids(colours: Tensor, clusters: Tensor) -> Tensor:
    """``[..., 3]`` colours -> ``[...]`` index of the nearest palette entry of ``clusters`` (``[K, 3]``).

    Squared Euclidean distance expanded as ``|x|^2 - 2 x.c + |c|^2``, as ``ImageGPTImageProcessor`` computes it,
    in float32 even under autocast (bfloat16 distances would pick wrong colours).
    """
    with torch.autocast(colours.device.type, enabled=False):
        x, c = colours.float(), clusters.float()
        d = x.pow(2).sum(-1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(-1)
    return d.argmin(-1)


def check_positions(cfg: ImageEncoderConfig, height: int, width: int, images: str) -> None:
    """The ``H/P * W/P`` tokens of an image fit in ``encoder.max_positions``."""
    tokens = (height // cfg.patch_size) * (width // cfg.patch_size)
    if cfg.max_positions is not None and tokens > cfg.max_positions:
        raise ValueError(
            f"the {images} make {tokens} palette tokens ({height // cfg.patch_size}x{width // cfg.patch_size} units "
            f"of encoder.patch_size={cfg.patch_size}), more than encoder.max_positions={cfg.max_positions}: raise "
            "encoder.max_positions or encoder.patch_size"
        )


def palette_processor(arrays: ImageArrays, cfg: ImageEncoderConfig, run_dir: Path, seed: int) -> ImageGPTImageProcessor:
    """The run's ``ImageGPTImageProcessor``: the palette of ``RUN/processor`` (a resumed run), else one fitted now.

    Its ``size`` is the token grid (the images downsampled by ``encoder.patch_size``), mean and std 0.5 (pixels in
    ``[-1, 1]``), and it carries mmssl's ``patch_size`` (the domain's collate cuts units with it).
    """
    _, _, h, w = arrays.images.shape
    check_positions(cfg, h, w, f"{h}x{w} images of {arrays.source}")
    saved = Path(run_dir) / "processor"
    if is_palette_processor(saved):
        processor = ImageGPTImageProcessor.from_pretrained(str(saved))
        if len(processor.clusters) == cfg.palette_size:
            return processor
    chosen = torch.randperm(len(arrays), generator=torch.Generator().manual_seed(seed))[:PALETTE_IMAGES]
    colours = pixel_colours(arrays.images[chosen], cfg.patch_size)
    clusters = fit_palette(colours, cfg.palette_size, seed, f"the {len(arrays)} images of {arrays.source}")
    return ImageGPTImageProcessor(
        clusters=clusters,
        size={"height": h // cfg.patch_size, "width": w // cfg.patch_size},
        image_mean=[0.5] * PALETTE_CHANNELS,
        image_std=[0.5] * PALETTE_CHANNELS,
        do_convert_rgb=True,
        patch_size=cfg.patch_size,
    )


def is_palette_processor(folder: Path) -> bool:
    """``folder`` holds a saved ``ImageGPTImageProcessor`` (of a run or an export)."""
    path = Path(folder) / PROCESSOR_FILE
    return path.is_file() and json.loads(path.read_text()).get("image_processor_type", "").startswith("ImageGPT")


def is_imagegpt_export(folder: Path) -> bool:
    """``folder`` holds a transformers ImageGPT model."""
    path = Path(folder) / "config.json"
    return path.is_file() and json.loads(path.read_text()).get("model_type") == "imagegpt"


# ---------------------------------------------------------------------------- the encoder
def probe_features(transformer: ImageGPTModel, hidden_states: tuple[Tensor, ...], layer: int) -> Tensor:
    """``[B, T, D]`` normalised input of block ``layer`` (1-based; ``ln_f``'s output after the last block).

    ``hidden_states`` is ``ImageGPTModel``'s ``output_hidden_states``: the embeddings, each block's input, and the
    final output after ``ln_f``.
    """
    h = hidden_states[layer]
    return h if layer == len(transformer.h) else transformer.h[layer].ln_1(h)


class ImageGPTEncoder(Encoder):
    """``ImageGPTForCausalImageModeling`` on palette tokens of patch units (see the module docstring).

    The sequence it reads is the start token then the tokens of units ``0 .. T-2`` (``T <= n_positions``), so the
    output at unit ``t`` has read the tokens before ``t`` only and predicts token ``t``
    (:meth:`encode_from_start`). :meth:`encode` gives the probe features of ``probe_layer`` at every unit
    (``hidden``) and their mean (``summary``). Image batches carry no padding.
    """

    pipeline_tag = "image-feature-extraction"

    def __init__(self, model: ImageGPTForCausalImageModeling, clusters: Tensor, patch_size: int, probe_layer: int):
        super().__init__()
        config = model.config
        if tuple(clusters.shape) != (config.vocab_size - 1, PALETTE_CHANNELS):
            raise ValueError(
                f"a palette of {tuple(clusters.shape)} does not fit the model's vocabulary of {config.vocab_size} "
                "(palette size + the start token)"
            )
        if not 1 <= probe_layer <= config.n_layer:
            raise ValueError(f"encoder.probe_layer={probe_layer} must be in [1, encoder.num_layers={config.n_layer}]")
        self.model = model
        self.register_buffer("clusters", clusters.float().clone())  # [K, 3] palette in [-1, 1], in every checkpoint
        self.patch_size, self.probe_layer = patch_size, probe_layer
        self.hidden_size = config.n_embd
        self.vocab_size = config.vocab_size  # K colours + the start token
        self.start_token_id = config.vocab_size - 1  # as transformers' ImageGPT: the last id
        self.unit_dim = PALETTE_CHANNELS * patch_size**2

    def unit_ids(self, batch: Batch) -> Tensor:
        """``[B, T]`` palette index of each unit's mean colour (units are channel-major ``(3, P, P)`` patches)."""
        colours = batch.units.unflatten(-1, (PALETTE_CHANNELS, -1)).mean(-1)  # [B, T, 3]
        return palette_ids(colours, self.clusters)

    def _shifted(self, ids: Tensor) -> Tensor:
        """``[B, T]``: the start token, then ``ids[:, :-1]``."""
        start = torch.full_like(ids[:, :1], self.start_token_id)
        return torch.cat([start, ids[:, :-1]], dim=1)

    def _check_length(self, ids: Tensor) -> None:
        if ids.shape[1] > self.model.config.n_positions:
            raise ValueError(
                f"{ids.shape[1]} palette tokens do not fit in the model's {self.model.config.n_positions} positions "
                "(encoder.max_positions)"
            )

    def encode_from_start(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``(hidden [B, T, D], ids [B, T])``: the last layer (after ``ln_f``), where unit ``t`` has read the start
        token and units ``< t``, and the palette ids of the units (the targets of next-pixel prediction)."""
        ids = self.unit_ids(batch)
        self._check_length(ids)
        out = self.model.transformer(input_ids=self._shifted(ids), use_cache=False)
        return out.last_hidden_state, ids

    def encode(self, batch: Batch, mask: Tensor | None = None, all_layers: bool = False) -> EncoderOutput:
        if mask is not None:
            raise ValueError("encoder.arch=imagegpt has no mask token to encode a masked batch; use encoder.arch=vit")
        ids = self.unit_ids(batch)
        self._check_length(ids)
        out = self.model.transformer(input_ids=self._shifted(ids), output_hidden_states=True, use_cache=False)
        features = probe_features(self.model.transformer, out.hidden_states, self.probe_layer)
        return EncoderOutput(
            hidden=features,
            padding_mask=batch.padding_mask,
            summary=features.mean(1),
            layers=tuple(out.hidden_states) if all_layers else None,
        )

    def prediction_head(self) -> nn.Module:
        """ImageGPT's ``lm_head``: ``[..., D] -> [..., K]`` logits over the palette (never the start token)."""
        return self.model.lm_head

    def export(self, out_dir: Path) -> None:
        self.model.config.probe_layer = self.probe_layer  # read back by load_imagegpt_encoder
        self.model.save_pretrained(str(out_dir))


def imagegpt_config(cfg: ImageEncoderConfig, palette_size: int, tokens: int) -> ImageGPTConfig:
    """transformers' ``ImageGPTConfig`` of the ``encoder:`` section for ``palette_size`` colours and ``tokens`` units."""
    return ImageGPTConfig(
        vocab_size=palette_size + 1,
        n_positions=cfg.max_positions or tokens,
        n_embd=cfg.hidden_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        n_inner=cfg.intermediate_size,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.attention_dropout,
    )


def build_imagegpt_encoder(cfg: ImageEncoderConfig, processor: ImageGPTImageProcessor) -> ImageGPTEncoder:
    """A freshly initialised ImageGPT for the palette and token grid of ``processor`` (:func:`palette_processor`)."""
    clusters = torch.as_tensor(processor.clusters, dtype=torch.float32)
    rows, cols = int(processor.size["height"]), int(processor.size["width"])
    check_positions(cfg, rows * cfg.patch_size, cols * cfg.patch_size, f"{rows}x{cols}-token images")
    model = ImageGPTForCausalImageModeling(imagegpt_config(cfg, len(clusters), rows * cols))
    layer = cfg.probe_layer or max(1, cfg.num_layers // 2)
    return ImageGPTEncoder(model, clusters, int(processor.patch_size), layer)


def load_imagegpt_encoder(export_dir: Path, processor: Any, random_init: bool = False) -> ImageGPTEncoder:
    """An export's ImageGPT (or the same architecture freshly initialised) with its processor's palette."""
    if random_init:
        model = ImageGPTForCausalImageModeling(ImageGPTConfig.from_pretrained(str(export_dir)))
    else:
        model = ImageGPTForCausalImageModeling.from_pretrained(str(export_dir))
    clusters = torch.as_tensor(processor.clusters, dtype=torch.float32)
    layer = int(getattr(model.config, "probe_layer", None) or max(1, model.config.n_layer // 2))
    return ImageGPTEncoder(model, clusters, int(processor.patch_size), layer)


def load_palette_processor(folder: Path) -> ImageGPTImageProcessor:
    """The ``ImageGPTImageProcessor`` (palette, token grid, mmssl's ``patch_size``) saved in ``folder``."""
    return ImageGPTImageProcessor.from_pretrained(str(folder))
