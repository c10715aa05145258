"""Example colourisations of a ``colorization`` run: grey input, prediction and ground truth side by side.

Loads the run's recipe and latest checkpoint (encoder and the objective's decoder), takes ``--count`` evenly spaced
images of a split of the run's data (default ``test``: for ``skimage-photos``, crops of a photograph never trained
on), predicts their ab colours by annealed-mean decoding (T = 0.38, Zhang et al. 2016, Sec. 2.3) and writes one PNG:
a row per image, columns grey input (``L*`` only), prediction (``L*`` + predicted ab), ground truth. It also reports
the mean ab error of the predictions beside that of the grey guess (ab = 0), the floor a colouriser has to beat.
The last line printed is one JSON object.

    python experiments/colorization_examples.py runs/colorization --count 12 --out docs/figures/colorization.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from domains.image.domain import ImageRows, image_collate, load_images
from mmssl.checkpoint import latest_checkpoint
from mmssl.model import build_model, load_run_recipe, load_weights
from mmssl.objectives.base import SSLModel
from mmssl.objectives.color_space import lab_to_srgb, srgb_to_lab
from mmssl.registry import DOMAINS
from mmssl.types import Batch, Extra


def load_run(run_dir: Path) -> tuple[object, object, SSLModel]:
    """The run's recipe, processor and model with the latest checkpoint's weights, in eval mode.

    Raises:
        ValueError: the run is not a colorization run.
        FileNotFoundError: the run has no complete checkpoint.
    """
    recipe = load_run_recipe(run_dir)
    if recipe.objective.name != "colorization":
        raise ValueError(f"{run_dir} trained objective {recipe.objective.name!r}, not colorization")
    processor = DOMAINS.get(recipe.domain).load_processor(run_dir)
    model = build_model(recipe, processor)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint to load")
    load_weights(model, ckpt / "model.safetensors")
    return recipe, processor, model.eval()


def example_batch(recipe: object, processor: object, split: str, count: int) -> Batch:
    """``count`` evenly spaced images of ``split`` of the run's data, collated as in training."""
    arrays = load_images(dataclasses.replace(recipe.data, split=split, max_images=None))
    rows = ImageRows(arrays)
    index = np.linspace(0, len(rows) - 1, min(count, len(rows))).round().astype(int)
    return image_collate(processor, with_labels=False)([rows[int(i)] for i in index])


@torch.no_grad()
def colourisations(model: SSLModel, batch: Batch) -> dict[str, Tensor]:
    """``grey``, ``prediction`` and ``truth`` sRGB images ``[B, 3, H, W]`` in [0, 1], and the ab ``error`` ``[B]``
    of the prediction and ``grey_error`` ``[B]`` of ab = 0 (mean Euclidean distance in ab over the pixels)."""
    truth = batch.extras[Extra.PIXELS]
    lab = srgb_to_lab(truth)
    predicted_ab = model.objective.colorize(model.encoder, batch)
    grey_lab = torch.cat([lab[:, :1], torch.zeros_like(predicted_ab)], dim=1)
    return {
        "grey": lab_to_srgb(grey_lab),
        "prediction": lab_to_srgb(torch.cat([lab[:, :1], predicted_ab], dim=1)),
        "truth": truth,
        "error": (predicted_ab - lab[:, 1:]).norm(dim=1).mean((1, 2)),
        "grey_error": lab[:, 1:].norm(dim=1).mean((1, 2)),
    }


def example_grid(columns: Iterable[Tensor], scale: int = 4, gap: int = 2) -> Image.Image:
    """One row per image, one column per ``[B, 3, H, W]`` tensor, each image enlarged ``scale`` times."""
    columns = [torch.nn.functional.interpolate(c, scale_factor=scale, mode="nearest") for c in columns]
    b, _, h, w = columns[0].shape
    canvas = np.full((b * (h + gap) + gap, len(columns) * (w + gap) + gap, 3), 255, np.uint8)
    for j, images in enumerate(columns):
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i in range(b):
            top, left = gap + i * (h + gap), gap + j * (w + gap)
            canvas[top : top + h, left : left + w] = pixels[i]
    return Image.fromarray(canvas)


def main(argv: Iterable[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a colorization run (mmssl pretrain colorization)")
    parser.add_argument("--split", default="test", help="the split of the run's data to colourise")
    parser.add_argument("--count", type=int, default=8, help="images (rows of the figure)")
    parser.add_argument("--scale", type=int, default=4, help="pixel enlargement in the figure")
    parser.add_argument(
        "--out", type=Path, default=None, help="PNG to write (default RUN_DIR/colorization_examples.png)"
    )
    args = parser.parse_args(None if argv is None else list(argv))
    recipe, processor, model = load_run(args.run_dir)
    result = colourisations(model, example_batch(recipe, processor, args.split, args.count))
    out = args.out or args.run_dir / "colorization_examples.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    example_grid([result["grey"], result["prediction"], result["truth"]], args.scale).save(out)
    summary = {
        "png": str(out),
        "split": args.split,
        "images": len(result["truth"]),
        "ab_error": round(float(result["error"].mean()), 3),
        "grey_ab_error": round(float(result["grey_error"].mean()), 3),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
