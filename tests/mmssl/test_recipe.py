"""A recipe's cross-section checks (``Domain.check_recipe``) run when the recipe loads: a bad combination
is one error naming the keys, and ``mmssl pretrain`` stops before it creates the run directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmssl.cli import main
from mmssl.config import ConfigError
from mmssl.recipe import load_recipe

# (recipe, overrides, the error's text): one combination per domain that only the domain can judge
MISMATCHES = [
    (
        "bert",
        ["data.block_size=256", "encoder.max_position_embeddings=128"],
        "data.block_size=256 exceeds encoder.max_position_embeddings=128",
    ),
    ("gpt", ["data.sentence_pairs=true"], "data.sentence_pairs needs encoder.arch=bert"),
    ("graphmae", ["data.mode=full"], "data.mode=full trains on the whole graph at every step: set train.batch_size=1"),
    ("wav2vec2", ["data.stream=fbank"], "encoder.arch=wav2vec2 reads data.stream=waveform, got data.stream=fbank"),
    ("tera", ["encoder.input_dim=100"], "encoder.input_dim=100 must be data.num_mel_bins * data.frame_stride = 160"),
    (
        "clip_speech_text",
        ["encoder.audio.input_dim=100"],
        "encoder.audio.input_dim=100 must be data.num_mel_bins * data.frame_stride = 320",
    ),
    (
        "byol",
        ["data.local_crops=2", "data.local_size=10", "encoder.patch_size=4"],
        "data.local_size=10 is not a multiple of encoder.patch_size=4",
    ),
    # an objective's own check of other sections (SwAVConfig.check_recipe), and the encoder capabilities it needs
    (
        "swav",
        ["objective.num_prototypes=5000", "objective.queue_size=0"],
        "objective.num_prototypes=5000 is more than the 256 samples",
    ),
    ("ibot", ["encoder.arch=resnet"], "objective.name=ibot needs Encoder.encode(batch, mask)"),
    ("mae", ["encoder.arch=resnet"], "encoder.arch=resnet pools whole images"),
]


@pytest.mark.parametrize(("recipe", "overrides", "message"), MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_cross_section_mismatch_fails_when_the_recipe_loads(recipe: str, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=f"recipes/{recipe}.yaml: .*") as raised:
        load_recipe(recipe, overrides)
    assert message in str(raised.value)


@pytest.mark.parametrize(("recipe", "overrides", "message"), MISMATCHES[:3], ids=[m[0] for m in MISMATCHES[:3]])
def test_pretrain_stops_before_creating_the_run_directory(
    recipe: str, overrides: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "runs" / recipe
    sets = [arg for override in overrides for arg in ("--set", override)]
    assert main(["pretrain", recipe, *sets, "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmssl: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_matching_sections_load() -> None:
    assert load_recipe("graphmae", ["data.mode=full", "train.batch_size=1"]).data.mode == "full"
    assert load_recipe("bert", ["data.block_size=64", "encoder.max_position_embeddings=64"]).data.block_size == 64
    assert (
        load_recipe("byol", ["data.local_crops=2", "data.local_size=12", "encoder.patch_size=4"]).data.local_crops == 2
    )


def test_values_the_data_determines_are_computed_not_copied() -> None:
    """A pretext head's classes follow the jigsaw permutation set (or the four rotations) and HuBERT's follow
    the clusters; setting one to another value is an error naming both keys, before any run directory."""
    assert load_recipe("rotation").objective.num_classes == 4
    assert load_recipe("jigsaw", ["data.jigsaw_permutations=12"]).objective.num_classes == 12
    assert load_recipe("hubert", ["data.num_clusters=50"]).objective.num_classes == 50
    assert load_recipe("jigsaw", ["objective.num_classes=24"]).objective.num_classes == 24  # agreeing is fine
    with pytest.raises(
        ConfigError,
        match=r"objective.num_classes=10 does not match the data: "
        r"data.jigsaw_permutations=24 gives 24",
    ):
        load_recipe("jigsaw", ["objective.num_classes=10"])
