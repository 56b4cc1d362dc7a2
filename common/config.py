"""Composing the one Hydra configuration both entry points use.

``python -m simulations.run a=b c=d`` and ``flwr run . --run-config 'overrides="a=b c=d"'``
must resolve to the same config: both call :func:`compose` with the same override list.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def parse_overrides(overrides: str | list[str] | None) -> list[str]:
    """Hydra overrides from Flower's one-string run_config value (shell-style quoting)."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return shlex.split(overrides)
    return list(overrides)


def compose(overrides: str | list[str] | None = None) -> DictConfig:
    """The resolved config for ``overrides``, composed from the packaged ``conf/``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=parse_overrides(overrides))
    return resolved(cfg)


def resolved(cfg: DictConfig) -> DictConfig:
    """A plain copy with interpolations resolved and Hydra's own runtime node dropped."""
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    out = OmegaConf.create(container)
    OmegaConf.resolve(out)
    privacy = out.get("privacy")
    if privacy is not None and privacy.get("enabled") and privacy.get("epsilon") == float("inf"):
        # ε = ∞ is the non-private run, so one sweep `privacy.epsilon=1,4,8,inf` covers it.
        privacy.enabled = False
    return out


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, sort_keys=True)
