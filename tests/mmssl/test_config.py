"""Strict config loading: unknown keys, wrong types and invalid values are errors naming the key."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from mmssl.config import ConfigError, apply_overrides, from_dict, to_dict
from mmssl.recipe import load_recipe


@dataclass(frozen=True)
class Inner:
    rate: float = 0.1
    names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Outer:
    size: int
    mode: Literal["a", "b"] = "a"
    inner: Inner = field(default_factory=Inner)
    pair: tuple[float, float] = (0.9, 0.99)
    optional: int | None = None
    flag: bool = False


def test_round_trip_and_conversions() -> None:
    cfg = from_dict(Outer, {"size": 3, "inner": {"rate": 1, "names": ["x"]}, "pair": [0.5, "1e-3"]})
    assert cfg.inner.rate == 1.0 and isinstance(cfg.inner.rate, float)
    assert cfg.pair == (0.5, 0.001)
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, key",
    [
        ({"size": 1, "sise": 2}, "'sise'"),
        ({"size": 1, "inner": {"rat": 0.2}}, "'inner.rat'"),
        ({"size": "big"}, "size"),
        ({"size": 1.5}, "size"),
        ({"size": True}, "size"),
        ({"size": 1, "mode": "c"}, "mode"),
        ({"size": 1, "inner": {"rate": "fast"}}, "inner.rate"),
        ({"size": 1, "pair": [1.0]}, "pair"),
        ({"size": 1, "flag": "yes"}, "flag"),
        ({"size": 1, "inner": {"names": "x"}}, "inner.names"),
        ({}, "'size'"),
    ],
)
def test_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        from_dict(Outer, data)


def test_overrides_parse_yaml_values() -> None:
    raw = apply_overrides({"a": {"b": 1}}, ["a.b=2.5e-4", "a.c=[1, 2]", "d.e=true", "f=none"])
    assert raw == {"a": {"b": 2.5e-4, "c": [1, 2]}, "d": {"e": True}, "f": "none"}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="'a.b' is not a section"):
        apply_overrides({"a": {"b": 1}}, ["a.b.c=1"])


def test_recipe_overrides_are_type_checked() -> None:
    recipe = load_recipe("bert", ["train.lr=3e-4", "encoder.num_layers=2", "train.mixed_precision=bf16"])
    assert recipe.train.lr == pytest.approx(3e-4)
    assert recipe.encoder.num_layers == 2 and recipe.train.mixed_precision == "bf16"
    # YAML reads a bare `no` as false; the setting still means "no mixed precision"
    assert load_recipe("bert", ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_recipe("simclr", ["train.mixed_precision=auto"]).train.mixed_precision == "auto"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown key 'train.lrr'"),
        ("train.lr=fast", "train.lr"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("encoder.num_heads=3", "encoder.num_heads"),
        ("data.source=ftp", "data.source"),
        ("objective.mask_prob=1.5", "mask_prob"),
        ("objective.name=nope", "objective.name: unknown objective 'nope'"),
        ("domain=sound", "domain: unknown domain 'sound'"),
        ("bogus=1", "unknown key 'bogus'"),
        ("data.tokenizer.vocab_sise=10", "data.tokenizer.vocab_sise"),
    ],
)
def test_recipe_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_recipe("bert", [override])


def test_unknown_recipe_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="known recipes: .*bert.*gpt"):
        load_recipe("bret")
