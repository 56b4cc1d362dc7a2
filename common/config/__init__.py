"""Composing the one Hydra configuration both entry points use.

``python -m simulations.run a=b c=d`` and ``flwr run . --run-config 'overrides="a=b c=d"'``
must resolve to the same config: both call :func:`compose` with the same override list.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from common.config.schema import ConfigError, check_values, flatten, unknown_key
from common.model.families import FAMILIES
from common.privacy.placements import PLACEMENTS

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def parse_overrides(overrides: str | list[str] | None) -> list[str]:
    """Hydra overrides from Flower's one-string run_config value (shell-style quoting)."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return shlex.split(overrides)
    return list(overrides)


def compose(overrides: str | list[str] | None = None) -> DictConfig:
    """The resolved, checked config for ``overrides``, composed from the packaged ``conf/``."""
    overrides = parse_overrides(overrides)
    known = known_keys(overrides)
    for o in overrides:  # before Hydra, whose own message would be several lines
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if "." in key and not key.startswith("hydra.") and key not in known:
            raise unknown_key(key, value, known, option_owners(key), raw=True)
    return resolved(_hydra_compose(overrides), known)


def option_owners(key: str) -> list[str]:
    """The options of ``key``'s config group whose file has ``key`` (``model.lora_r``: model=lora…)."""
    group, _, rest = key.partition(".")
    if group not in CONFIG_GROUPS:
        return []
    owners = []
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        if rest in flatten(OmegaConf.to_container(OmegaConf.load(path))):
            owners.append(f"{group}={path.stem}")
    return owners


def _hydra_compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except Exception as e:  # Hydra's own refusals (a bad group option, an unparsable override)
        from hydra.errors import HydraException

        if isinstance(e, HydraException):
            raise ConfigError(str(e).strip().splitlines()[0]) from None
        raise


CONFIG_GROUPS = tuple(sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir()))


def known_keys(overrides: list[str]) -> set[str]:
    """The keys of the config the chosen groups give, before any value override: a key only a
    ``+key=value`` override adds is one fedrec never reads."""
    groups = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in CONFIG_GROUPS]
    for o in groups:
        group, _, option = o.lstrip("+~").partition("=")
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        if option and option not in options and group != "tuned":
            raise ConfigError(f"{group}={option}: no such option; choose one of {', '.join(options)}")
    return set(flatten(_hydra_compose(groups)))


def resolved(cfg: DictConfig, known: set[str] | None = None) -> DictConfig:
    """A plain copy with interpolations resolved and Hydra's own runtime node dropped, checked
    against the schema (``known``: the keys the chosen config groups have)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    out = OmegaConf.create(container)
    OmegaConf.resolve(out)
    check_values(out, known, option_owners)
    privacy = out.get("privacy")
    if privacy is not None and privacy.get("enabled") and privacy.get("epsilon") == float("inf"):
        # ε = ∞ is the non-private run, so one sweep `privacy.epsilon=1,4,8,inf` covers it.
        privacy.enabled = False
    if privacy is not None:
        resolve_noise(out)
    resolve_threshold(out)
    return out


NOISE_PLACEMENTS = tuple(PLACEMENTS)


def default_noise(cfg: DictConfig) -> str:
    """What ``privacy.noise=auto`` means for this run: the placement that costs least and
    holds its guarantee here (README, "Which guarantee holds against whom")."""
    if cfg.get("deployment", {}).get("catalogue"):
        return "local"  # a deployment's clients cannot share the global counts distributed noise needs
    family = FAMILIES.get(cfg.get("model", {}).get("name"))
    if family is not None and "distributed" not in family.noise:
        return "local"  # e.g. the causal LM, whose DP-SGD runs inside its own training loop
    if cfg.get("strategy", {}).get("name") == "qfedavg":
        return "local"  # q-FFL weighs each client's own update
    if cfg.get("partition", {}).get("scheme") == "cross_device":
        return "central"  # a one-user client's DP-SGD would protect interactions, not users
    return "distributed"


def resolve_noise(cfg: DictConfig) -> None:
    """Replace ``privacy.noise=auto`` and ``privacy.popularity_prior=null`` by what they mean,
    so config.yaml records the mechanism that ran."""
    p = cfg.privacy
    if p.get("noise") == "auto":
        p.noise = default_noise(cfg) if p.get("enabled") else "none"
    if p.get("enabled") and p.get("noise") not in NOISE_PLACEMENTS:
        raise ValueError(f"privacy.noise={p.get('noise')!r}: expected one of auto, {', '.join(NOISE_PLACEMENTS)}")
    if "popularity_prior" in p and p.popularity_prior is None:
        # Baselines train with their own DP-SGD and never release the prior.
        federated = not cfg.get("baseline")
        p.popularity_prior = (
            default_prior_share(float(p.epsilon))
            if federated and p.get("enabled") and PLACEMENTS[p.noise].pooled_step
            else 0.0
        )


def resolve_threshold(cfg: DictConfig) -> None:
    """``secagg.reconstruction_threshold=null``: every client with distributed noise, else 0.6.

    With distributed noise each client adds 1/t of the noise variance so that any sum the
    protocol reveals (at least t clients) carries the full noise; when all m clients survive it
    carries m/t of it. At t = 0.6·m that is 1.67× the variance the guarantee needs, paid in
    accuracy every round (ML-100K validation, ε = 8: NDCG@10 0.058 at t = 6 of 10 against
    0.068 at t = 10). Needing every client costs dropout tolerance instead: a round with a
    missing client fails and leaves the model unchanged; a lower threshold buys it back."""
    secagg = cfg.get("secagg")
    if secagg is None or "reconstruction_threshold" not in secagg or secagg.reconstruction_threshold is not None:
        return
    privacy = cfg.get("privacy") or {}
    secagg.reconstruction_threshold = 1.0 if privacy.get("enabled") and privacy.get("noise") == "distributed" else 0.6


def default_prior_share(epsilon: float) -> float:
    """The prior's default share of ε: 10 %, but at least ε_p = min(0.4, ε/2) on its own.

    Below ε_p ≈ 0.4 the noisy counts stop ranking the popular items (ML-100K validation:
    ε_p 0.1 / 0.2 / 0.4 / 0.8 give NDCG@10 0.007 / 0.028 / 0.034 / 0.034, popularity 0.034),
    while RDP composition makes the prior cheap for training (10 % of ε = 8 raises σ by 0.9 %)."""
    return max(0.1, min(0.4, epsilon / 2) / epsilon)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, sort_keys=True)
