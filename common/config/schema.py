"""Every configuration key, its type and what it allows: checked before a run starts.

Hydra composes ``conf/`` and the command line; this module refuses what Hydra lets through:
a key the chosen config groups do not have (``+strategy.num_round=3``), a value of the wrong
type (``privacy.epsilon=abc``), an unknown choice (``privacy.noise=Central``) or a value out of
range (``strategy.num_rounds=0``, ``strategy.fraction_fit=0``). Each refusal is one line naming
the key, the value and what is allowed (:class:`ConfigError`).

The schema is a flat table (``SCHEMA``) of dotted keys; ``tests/test_config_schema.py`` holds
it to every option's YAML, so a key added to ``conf/`` without a spec fails the tests.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

from common.model.families import FAMILIES
from common.privacy.placements import PLACEMENTS


class ConfigError(ValueError):
    """A configuration value fedrec refuses; the message names the key and what is allowed."""


@dataclass(frozen=True)
class Spec:
    kind: str  # int | number | bool | text | choice | int_list | text_list
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself not allowed
    hi_open: bool = False
    choices: tuple = ()
    null: bool = False  # null (None) allowed
    inf: bool = False  # number: +inf allowed (above hi)

    def allowed(self) -> str:
        """What this key accepts, in words."""
        if self.kind == "choice":
            words = ", ".join("null" if c is None else str(c) for c in self.choices)
            return f"one of {words}"
        what = {
            "int": "an integer",
            "number": "a number",
            "bool": "true or false",
            "text": "a string",
            "int_list": "a list of integers",
            "text_list": "a list of strings",
        }[self.kind]
        bounds = []
        if self.lo is not None:
            bounds.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            bounds.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        if bounds:
            what += " " + " and ".join(bounds)
        alternatives = [w for w, on in (("inf", self.inf), ("null", self.null)) if on]
        if alternatives:
            what += f" (or {' or '.join(alternatives)})"
        return what

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.null or (self.kind == "choice" and None in self.choices)
        if self.kind == "choice":
            return any(value == c and type(value) is type(c) for c in self.choices if c is not None)
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "text":
            return isinstance(value, str) and value != ""
        if self.kind in ("int_list", "text_list"):
            item = Spec("int", self.lo, self.hi) if self.kind == "int_list" else Spec("text")
            return isinstance(value, (list, tuple)) and all(item.accepts(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if math.isnan(value):
            return False
        if math.isinf(value):
            return self.inf and value > 0
        return self._in_range(float(value))

    def _in_range(self, v: float) -> bool:
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return self.hi is None or not (v > self.hi or (self.hi_open and v == self.hi))


def Int(lo: float | None = None, hi: float | None = None, null: bool = False) -> Spec:  # noqa: N802
    return Spec("int", lo, hi, null=null)


def Num(
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,  # noqa: N802
    null: bool = False,
    inf: bool = False,
) -> Spec:
    return Spec("number", lo, hi, lo_open, hi_open, null=null, inf=inf)


def Choice(*choices: Any) -> Spec:  # noqa: N802
    return Spec("choice", choices=tuple(choices))


BOOL = Spec("bool")
TEXT = Spec("text")
PATH = Spec("text", null=True)  # a file or folder; null = not set
POSITIVE = Num(0, lo_open=True)
SHARE = Num(0, 1)  # a fraction in [0, 1]

SCHEMA: dict[str, Spec] = {
    # top level
    "seed": Int(0),
    "baseline": Choice(None, "popularity", "centralized", "local", "sasrec_ids"),
    "device": TEXT,  # auto | cpu | cuda | cuda:N: checked by common.device, which names what exists
    "output_dir": PATH,
    "cache_dir": PATH,
    "resume": BOOL,
    "train.lr": POSITIVE,
    "train.batch_size": Int(1),
    "train.weight_decay": Num(0),
    "train.epochs": Int(1),
    "deployment.catalogue": PATH,
    "deployment.catalogue_format": Choice("csv", "movielens_100k", "movielens_1m"),
    "deployment.num_clients": Int(1),
    "deployment.activity_threshold": Int(0, null=True),
    "audit.canaries": Int(0),
    "audit.canary_length": Int(1),
    "audit.holdout": Num(0, 1, hi_open=True),
    "audit.seed": Int(0),
    # dataset=
    "dataset.name": Choice("synthetic", "movielens_100k", "movielens_1m", "csv"),
    "dataset.path": PATH,
    "dataset.num_users": Int(2),
    "dataset.num_items": Int(2),
    "dataset.num_topics": Int(1),
    "dataset.mean_interactions": Int(3),
    "dataset.seed": Int(0),
    # partition=
    "partition.scheme": Choice("iid", "dirichlet", "attribute", "cross_device"),
    "partition.num_clients": Int(1, null=True),
    "partition.alpha": POSITIVE,
    "partition.num_clusters": Int(1),
    "partition.attribute": TEXT,
    # model=
    "model.name": Choice(*FAMILIES),
    "model.lm.path": PATH,
    "model.lm.max_length": Int(1),
    "model.lm.batch_size": Int(1),
    "model.dim": Int(1),
    "model.max_len": Int(1),
    "model.layers": Int(0),
    "model.heads": Int(1),
    "model.dropout": Num(0, 1, hi_open=True),
    "model.item_text": BOOL,
    "model.item_ids": BOOL,
    "model.item_bias": BOOL,
    "model.num_negatives": Int(1),
    "model.user_encoder": Choice("mean", "sasrec"),
    "model.decay": Num(0, 1),
    "model.top_layers": Int(1),
    "model.lora_r": Int(1),
    "model.lora_alpha": POSITIVE,
    "model.lora_targets": Spec("text_list"),
    "model.path": PATH,
    "model.max_history": Int(1),
    "model.candidates_per_user": Int(1),
    "model.train_targets": Int(0),
    "model.max_tokens": Int(8),
    "model.gradient_checkpointing": BOOL,
    "model.eval_batch_size": Int(1),
    "model.cache_lower": BOOL,
    "model.lower_cache_mb": Num(0),
    "model.lower_cache_dir": PATH,
    "model.rerank_run": PATH,
    "model.rerank_top": Int(1),
    # privacy=
    "privacy.enabled": BOOL,
    "privacy.epsilon": Num(0, lo_open=True, inf=True, null=True),
    "privacy.delta": Num(0, 1, lo_open=True, hi_open=True, null=True),
    "privacy.max_grad_norm": Num(0, lo_open=True, null=True),
    "privacy.lr": Num(0, lo_open=True, null=True),
    "privacy.accountant": Choice("rdp", "prv"),
    "privacy.noise": Choice("auto", *PLACEMENTS, "none"),
    "privacy.popularity_prior": Num(0, 1, hi_open=True, null=True),
    "privacy.sample_rate": Num(0, 1, lo_open=True, null=True),
    "privacy.secure_mode": BOOL,
    "privacy.seeded_noise": BOOL,
    "privacy.budget_epsilon": Num(0, lo_open=True, inf=True, null=True),
    "privacy.ledger_dir": PATH,
    # secagg=
    "secagg.enabled": BOOL,
    "secagg.protocol": Choice("secagg+", "none"),
    "secagg.num_shares": Num(0, lo_open=True),  # a fraction of the clients (<= 1.0) or a count > 2
    "secagg.reconstruction_threshold": Num(0, lo_open=True, null=True),  # fraction or count
    "secagg.clipping_range": POSITIVE,
    "secagg.quantization_range": Int(2),
    "secagg.modulus_range": Int(2),
    "secagg.max_weight": Num(0, lo_open=True, null=True),
    "secagg.timeout": Num(0, lo_open=True, null=True),
    "secagg.update_clip_norm": POSITIVE,
    "secagg.on_failure": Choice("continue", "stop"),
    "secagg.simulate_dropout": Num(0, 1, hi_open=True),
    # strategy=
    "strategy.name": Choice("fedavg", "qfedavg"),
    "strategy.num_rounds": Int(1),
    "strategy.fraction_fit": Num(0, 1, lo_open=True),
    "strategy.min_fit_clients": Int(1),
    "strategy.local_epochs": Int(1),
    "strategy.fraction_evaluate": Num(0, 1),
    "strategy.evaluate_every": Int(0),
    "strategy.q": Num(0),
    "strategy.qffl_lr": POSITIVE,
    "strategy.max_update_norm": Num(0, lo_open=True, null=True),
    "strategy.max_client_weight": Int(1, null=True),
    "strategy.median_norm_ratio": Num(1, null=True),
    # simulation=
    "simulation.backend": Choice("ray"),
    "simulation.num_cpus_per_client": Num(0, lo_open=True),
    "simulation.num_gpus_per_client": Num(0),
    "simulation.measure_bytes": BOOL,
    "simulation.ray_address": PATH,
    "simulation.poll_interval": POSITIVE,
    # eval=
    "eval.ks": Spec("int_list", lo=1),
    "eval.sampled_negatives": Int(0),
    "eval.split": Choice("test", "valid"),
    "eval.rerank.method": Choice("none", "ugf"),
    "eval.rerank.candidates": Int(1),
    "eval.rerank.relevance": Choice("model", "oracle"),
    "eval.rerank.max_ndcg_loss": Num(0, 1),
    "eval.rerank.epsilon": Num(0, null=True),
}


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value (lists are leaves)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    out: dict[str, Any] = {}
    for k, v in container.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _show(value: Any) -> str:
    return "null" if value is None else (repr(value) if isinstance(value, str) else str(value))


def unknown_key(
    key: str, value: Any, allowed: Iterable[str], owners: list[str] | None = None, raw: bool = False
) -> ConfigError:
    """The refusal of a key the chosen config does not have: where it belongs, or the nearest
    name. ``raw``: ``value`` is the command line's text, shown as typed."""
    shown = f"{key}={value if raw else _show(value)}"
    if owners:
        return ConfigError(f"{shown}: a setting of {' or '.join(owners)}, not of this run's config")
    near = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.75)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return ConfigError(f"{shown}: fedrec's config has no such key{hint}")


def check_values(cfg: DictConfig | dict, known: Iterable[str] | None = None, owners=None) -> None:
    """Refuse the first key of ``cfg`` that is unknown (not in ``known``, the keys of the chosen
    config groups' files, nor in SCHEMA), or whose value its spec does not accept. ``owners(key)``
    names the group options that do have a key (for the message)."""
    flat = flatten(cfg)
    allowed = set(SCHEMA) if known is None else set(known) & set(SCHEMA)
    for key, value in flat.items():
        if key not in allowed:
            raise unknown_key(key, value, allowed, owners(key) if owners else None)
        spec = SCHEMA[key]
        if not spec.accepts(value):
            raise ConfigError(f"{key}={_show(value)}: expected {spec.allowed()}")
