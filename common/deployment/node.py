"""On-premise deployment: each SuperNode reads only its own data, the ServerApp only the catalogue.

A deployed SuperNode is started with ``--node-config`` keys (docs/deployment.md):

- ``data-path``   its own data folder (required: its presence is what makes a client "deployed");
- ``data-format`` ``csv`` (default, the generic folder, README "Data formats") | ``movielens_100k`` | ``movielens_1m``;
- ``client-id``   the integer the coordinator gave this organisation (required; keys ``summary.json``'s
  per-client entries);
- ``state-dir``   where the client keeps what must survive restarts: its privacy ledger and its cached
  item embeddings (default: no ledger file, embeddings under ``cache_dir``);
- ``device``      ``auto`` | ``cpu`` | ``cuda:N``, overriding the run's ``device``;
- ``max-epsilon`` optional: the organisation's own ε ceiling; the client refuses to train unless
  privacy.noise=local and the run's budget is at most this (see ``check_org_budget``).

The client splits its own users leave-one-out and is one partition of them all; its DP plan counts
only its own users (δ defaults from them too). The ServerApp of a deployment (``deployment.catalogue``
set) knows no users: it builds the model from the shared item catalogue, waits for
``deployment.num_clients`` SuperNodes and checks only what needs no user data.

Fairness in a deployment: nobody sees all users, so the activity groups are per client (each
client's own ``top_share`` most active users are "advantaged") unless the coordinator publishes
``deployment.activity_threshold`` (training interactions), which every client then applies; the
item long-tail share needs global item counts and is left out.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from common.config.checks import check_plans, check_strategy
from common.data import DATASETS, DataError, InteractionData, leave_one_out, load_dataset
from common.data.run import RunData, load_run_data
from common.data.types import LeaveOneOutSplit
from common.fairness.groups import fairness_groups
from common.model.item_encoder import encode_texts
from common.privacy.accounting import PrivacyConfigError
from common.privacy.plans import is_central, is_distributed
from common.secagg.protocol import check_secagg

log = logging.getLogger("fedrec")
FORMATS = tuple(d for d in DATASETS if d != "synthetic")


def is_deployment(cfg: DictConfig) -> bool:
    """The run's ServerApp has only the catalogue (``deployment.catalogue`` set)."""
    return bool(cfg.get("deployment") and cfg.deployment.get("catalogue"))


def is_deployed_node(node_config) -> bool:
    return bool(node_config.get("data-path"))


def client_id_of(node_config) -> int:
    """The number the coordinator gave this organisation; required, since two clients with one
    number would merge in the run's per-client results."""
    value = node_config.get("client-id")
    if value is None:
        raise ValueError("node-config client-id is missing: give each SuperNode its own integer (client-id=0, 1, ...)")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"node-config client-id={value!r}: expected an integer") from None


def node_device(cfg: DictConfig, node_config) -> str:
    """The SuperNode's own ``device`` when it gives one, else the run's."""
    return str(node_config.get("device") or cfg.device)


def _check_node(cfg: DictConfig, node_config) -> tuple[Path, str]:
    path = Path(str(node_config["data-path"])).expanduser()
    fmt = str(node_config.get("data-format") or "csv")
    if fmt not in FORMATS:
        raise DataError(f"node-config data-format={fmt!r}: expected one of {', '.join(FORMATS)}")
    if is_distributed(cfg):
        raise PrivacyConfigError(
            "privacy.noise=distributed is not supported in a deployment: its noise shares "
            "need every client's user count; use privacy.noise=local or central"
        )
    return path, fmt


def check_org_budget(cfg: DictConfig, node_config) -> None:
    """node-config ``max-epsilon=X``: the organisation's own ε ceiling, whatever the coordinator's
    run config says. Training needs privacy on with local noise (the only mode whose ε this
    client accounts for its own users) and a budget (privacy.budget_epsilon, else ε) <= X."""
    ceiling = node_config.get("max-epsilon")
    if ceiling is None:
        return
    from common.privacy.ledger import budget_of

    try:
        ceiling = float(ceiling)
    except (TypeError, ValueError):
        raise ValueError(f"node-config max-epsilon={ceiling!r}: expected a number") from None
    privacy = cfg.privacy
    if not privacy.enabled or privacy.get("noise") != "local":
        raise PrivacyConfigError(
            f"node-config max-epsilon={ceiling:g}: this organisation trains only with "
            f"privacy.noise=local; the run asks privacy.noise={privacy.get('noise')}"
        )
    if budget_of(privacy) > ceiling:
        raise PrivacyConfigError(
            f"node-config max-epsilon={ceiling:g}: the run's budget ε={budget_of(privacy):g} "
            "(privacy.budget_epsilon, else privacy.epsilon) is over it; refusing to train"
        )


def load_client_data(cfg: DictConfig, node_config) -> RunData:
    """This SuperNode's RunData from its own folder only: all its users are its one partition."""
    path, fmt = _check_node(cfg, node_config)
    client_id_of(node_config)  # refused before any data is read
    check_org_budget(cfg, node_config)
    data = load_dataset(fmt, path)
    split = leave_one_out(data)
    if split.num_users == 0:
        raise DataError(f"node-config data-path={path}: no user with at least 3 interactions")
    state = node_config.get("state-dir")
    # Under state-dir the embeddings survive restarts of the SuperNode and are computed once.
    cache = Path(str(state)) / "item_embeddings" if state else cfg.get("cache_dir")
    text = _item_embeddings(cfg, data, cache)
    groups = fairness_groups(split, data.user_attributes)
    threshold = cfg.deployment.get("activity_threshold") if cfg.get("deployment") else None
    if threshold is not None:
        lengths = np.array([len(t) for t in split.train], dtype=np.int64)
        groups = replace(groups, advantaged=lengths >= int(threshold), activity_threshold=int(threshold))
    log.info(
        "client data %s (%s): %d users (%d dropped with < 3 interactions), %d items",
        path,
        fmt,
        split.num_users,
        split.stats.get("users_dropped", 0),
        data.num_items,
    )
    return RunData(data, split, [np.arange(split.num_users, dtype=np.int64)], text, None, groups)


def _item_embeddings(cfg: DictConfig, data: InteractionData, cache) -> np.ndarray:
    lm = cfg.model.get("lm")
    if lm is None:  # as common.data.run: a model without an embedding LM (causal_lora) reads text in prompts
        return np.zeros((data.num_items, 0), dtype=np.float32)
    return encode_texts(data.item_text, lm.path, lm.max_length, lm.batch_size, cache)


def load_catalogue(path: str | Path, fmt: str = "csv") -> InteractionData:
    """The shared item catalogue alone: ``items.csv`` (or ``.parquet``) of a csv folder, or the
    items of a MovieLens folder. Interactions in the folder, if any, are not read for csv."""
    if fmt not in FORMATS:
        raise DataError(f"deployment.catalogue_format={fmt!r}: expected one of {', '.join(FORMATS)}")
    folder = Path(path).expanduser()
    if fmt != "csv":
        full = load_dataset(fmt, folder)
        return InteractionData(full.name, full.item_ids, full.item_text, [], [], [])
    from common.data.tabular import find_table, read_table  # the one reader of the generic format

    if not folder.is_dir():
        raise DataError(f"deployment.catalogue={folder}: not a folder (expected one holding items.csv)")
    items = read_table(find_table(folder, "items", required=True))
    items.require("item_id", "text")
    ids, text = items.strings("item_id"), items.strings("text")
    if len(set(ids)) != len(ids):
        raise DataError(f"{items.path}: duplicate item_id values")
    return InteractionData(f"csv:{folder.name}", ids, text, [], [], [])


def load_server_data(cfg: DictConfig) -> RunData:
    """What the ServerApp loads: the whole data set in a simulation; in a deployment only the
    catalogue, with one empty partition per expected SuperNode."""
    if not is_deployment(cfg):
        return load_run_data(cfg)
    n = int(cfg.deployment.num_clients)
    if n < 1:
        raise ValueError(f"deployment.num_clients={cfg.deployment.num_clients}: at least one SuperNode is needed")
    return _empty_run(cfg, n)


def check_server_plans(cfg: DictConfig, run: RunData) -> None:
    """``check_plans`` in a simulation; in a deployment what can be checked without users
    (each client checks its own DP plan, with its own users and δ, when it first trains)."""
    if not is_deployment(cfg):
        check_plans(cfg, run)
        return
    if is_distributed(cfg):
        raise PrivacyConfigError(
            "privacy.noise=distributed is not supported in a deployment: its noise shares "
            "need every client's user count; use privacy.noise=local or central"
        )
    if cfg.privacy.enabled and cfg.privacy.get("delta") is None:
        # Each client's default δ comes from its own user count: the summary's δ would be one of them.
        raise PrivacyConfigError(
            "privacy.delta must be set in a deployment with privacy on (one δ for every "
            "organisation, below 1/users of the smallest one), e.g. privacy.delta=1e-5"
        )
    if cfg.secagg.enabled and cfg.secagg.max_weight is None:
        raise ValueError(
            "secagg=secaggplus in a deployment needs secagg.max_weight=N, at least the largest "
            "organisation's number of users (SecAgg+ weights are users; the server cannot count them)"
        )
    if is_central(cfg) or not cfg.privacy.enabled:
        check_plans(cfg, run)  # nothing there needs a user
    else:
        check_secagg(cfg)
        check_strategy(cfg)


def _empty_run(cfg: DictConfig, n: int) -> RunData:
    data = load_catalogue(cfg.deployment.catalogue, str(cfg.deployment.get("catalogue_format") or "csv"))
    text = _item_embeddings(cfg, data, cfg.get("cache_dir"))
    empty = np.zeros(0, dtype=np.int64)
    split = LeaveOneOutSplit(empty, [], empty, empty, data.num_items, {"users": 0})
    log.info(
        "deployment: catalogue %s with %d items, waiting for %d SuperNodes", cfg.deployment.catalogue, data.num_items, n
    )
    return RunData(data, split, [empty] * n, text)


def deployment_data_block(cfg: DictConfig, run: RunData, client_eval: dict[str, dict]) -> dict:
    """summary.json's ``data`` block of a deployment: the catalogue and what clients reported."""
    users = {k: int(v.get("users", 0)) for k, v in client_eval.items()}
    return {
        "dataset": run.data.name,
        "catalogue": str(cfg.deployment.catalogue),
        "items": run.data.num_items,
        "users": sum(users.values()),
        "clients": run.num_clients,
        "client_users": users,
        "activity_groups": "global threshold" if cfg.deployment.get("activity_threshold") is not None else "per client",
    }


# ---- Preparing organisations' folders (deploy/split_data.py, tests) ----------------------------
