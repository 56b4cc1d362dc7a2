"""The registries of variants: model families and noise placements. Every variant is one entry
whose parts resolve with the shared signatures, and the config offers exactly the registered names."""

import inspect
from pathlib import Path

import pytest
import yaml

from common.config.schema import SCHEMA
from common.model.families import FAMILIES, family_of

ROOT = Path(__file__).resolve().parents[1]
SIGNATURES = {
    "build": ["cfg", "run"],
    "train": ["model", "run", "rows", "seqs", "cfg", "lr", "seed", "dp"],
    "evaluate": ["model", "run", "rows", "cfg"],
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("part", sorted(SIGNATURES))
def test_every_family_part_resolves_with_the_shared_signature(name, part):
    fn = family_of(name).function(part)
    assert list(inspect.signature(fn).parameters)[: len(SIGNATURES[part])] == SIGNATURES[part]


def test_the_config_offers_exactly_the_registered_families():
    assert set(SCHEMA["model.name"].choices) == set(FAMILIES)
    names = {yaml.safe_load(p.read_text())["name"] for p in (ROOT / "conf" / "model").glob("*.yaml")}
    assert names == set(FAMILIES)


def test_an_unknown_family_is_one_line_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"model='foo': known models are projection, lora, causal_lora"):
        family_of("foo")


def test_auto_noise_follows_what_the_family_supports():
    from common.config import compose

    assert compose("").privacy.noise == "distributed"
    assert "distributed" not in family_of("causal_lora").noise
    assert compose("model=causal_lora").privacy.noise == "local"


def test_noise_placements_come_from_one_registry():
    from common.config import compose
    from common.privacy.placements import PLACEMENTS, placement_of
    from common.privacy.plans import is_central, is_distributed

    assert set(SCHEMA["privacy.noise"].choices) == {"auto", "none", *PLACEMENTS}
    for name, placement in PLACEMENTS.items():
        cfg = compose([f"privacy.noise={name}", "secagg=none" if name != "distributed" else "secagg=secaggplus"])
        assert placement_of(cfg) is placement
        assert is_distributed(cfg) == (name == "distributed") and is_central(cfg) == (name == "central")
    assert placement_of(compose(["privacy=none"])) is None
