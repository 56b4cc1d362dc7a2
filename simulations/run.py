"""One run (or a Hydra sweep with -m): ``python -m simulations.run [overrides]``.

A federated run goes through Flower's simulation engine with the same overrides that
``flwr run . --run-config 'overrides="…"'`` takes; ``baseline=popularity|centralized|local|sasrec_ids``
runs a baseline in-process. Either way the run folder holds config.yaml, metrics.jsonl and, only if
the run completed, summary.json; the result table is printed at the end.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from common.config import CONF_DIR, resolved, to_yaml  # noqa: E402
from common.config.checks import check_plans  # noqa: E402
from common.console import quiet_third_party  # noqa: E402
from common.data.catalogue import catalogue_source, check_catalogue
from common.data.run import load_run_data  # noqa: E402
from common.data.types import DataError  # noqa: E402
from common.model.item_encoder import ModelPathError  # noqa: E402
from common.privacy.accounting import PrivacyConfigError  # noqa: E402
from common.tracking.checkpoint import clear_checkpoint, is_complete, resume_point
from common.tracking.store import RunFailed, RunStore  # noqa: E402
from simulations.baselines import BASELINES, run_baseline  # noqa: E402
from simulations.interrupt import resume_hint, stop_on_interrupt  # noqa: E402
from simulations.table import format_table, protection_line  # noqa: E402

log = logging.getLogger("fedrec")


def app_overrides(task_overrides: list[str], output_dir: Path) -> str:
    """The one run_config string the Flower apps compose the same config from."""
    kept = [o for o in task_overrides if not o.startswith("output_dir=")]
    # Clients may run in another working directory (Ray workers, SuperNodes): absolute paths.
    kept = [_absolute(o) for o in kept]
    return " ".join(shlex.quote(o) for o in [*kept, f"output_dir={output_dir}"])


def _absolute(override: str) -> str:
    key, _, value = override.partition("=")
    if key.lstrip("+") in ("dataset.path", "privacy.ledger_dir") and value not in ("", "null", "~"):
        return f"{key}={Path(value).resolve()}"
    return override


def execute(cfg: DictConfig, task_overrides: list[str], out: Path) -> dict:
    if cfg.baseline is not None and cfg.baseline not in BASELINES:
        raise ValueError(f"baseline={cfg.baseline!r}: known baselines are {', '.join(BASELINES)}")
    if cfg.strategy.name not in ("fedavg", "qfedavg"):
        raise ValueError(f"strategy={cfg.strategy.name!r}: known strategies are fedavg, qfedavg")
    store = RunStore(out)
    ckpt = None
    resuming = bool(cfg.get("resume")) and cfg.baseline is None
    if resuming:
        # The ServerApp continues the folder from its checkpoint: nothing here may clear it.
        ckpt = resume_point(cfg, out)  # a checkpoint of another config: one line, before Ray starts
        if is_complete(cfg, out):
            print(f"fedrec: {out} already holds a completed run; resume=true has nothing to do")
            return store.read_summary()
    # Every check that needs the data runs before anything is written: a refused run leaves
    # no config.yaml behind (main() then removes the folder Hydra made for it).
    run = load_run_data(cfg)  # also encodes item text once, so clients find it cached
    if ckpt is not None:
        check_catalogue(ckpt.catalogue, run.data, catalogue_source(cfg), "resume=true")
    if cfg.baseline is None:
        check_plans(cfg, run)
    if not resuming:
        store.start(cfg)
        clear_checkpoint(out)  # a later resume=true must not continue an older run's state
    if cfg.baseline is not None:
        summary = run_baseline(cfg, run, store)
    else:
        from simulations.engine import run_flower_simulation

        sim = cfg.simulation
        try:
            run_flower_simulation(
                app_overrides(task_overrides, out),
                num_clients=run.num_clients,
                num_cpus_per_client=sim.num_cpus_per_client,
                num_gpus_per_client=sim.num_gpus_per_client,
                backend=sim.backend,
            )
        except Exception:
            if store.read_failure():  # the ServerApp stopped on purpose and said why
                raise RunFailed(store.read_failure()) from None
            raise
        if not store.summary_path.exists():
            raise RunFailed(
                store.read_failure()
                or f"the federated run did not complete (no {store.summary_path}); see the log above"
            )
        return store.read_summary()
    store.write_summary(summary)
    return summary


def _name(cfg: DictConfig) -> str:
    return cfg.baseline or ("federated DP" if cfg.privacy.enabled else "federated")


def sweep_position(hc) -> str | None:
    """ "run i/M" inside a Hydra multirun (M from the sweep's command line), else None."""
    from hydra.types import RunMode

    if hc.mode != RunMode.MULTIRUN:
        return None
    total = None
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        args = [a for a in sys.argv[1:] if not a.startswith("-")]
        total = 1
        for o in OverridesParser.create().parse_overrides(args):
            if o.is_sweep_override():
                total *= len(list(o.sweep_string_iterator()))
    except Exception:  # a sweep syntax we cannot count: show the index alone
        total = None
    return f"run {hc.job.num + 1}/{total}" if total else f"run {hc.job.num + 1}"


def completed_summary(cfg: DictConfig, out: Path) -> dict | None:
    """The summary of a completed run in ``out`` whose resolved config equals ``cfg``."""
    store = RunStore(out)
    config = out / "config.yaml"
    if store.summary_path.is_file() and config.is_file() and config.read_text() == to_yaml(cfg):
        return store.read_summary()
    return None


def chosen_run_dir(hydra_overrides: list[str]) -> bool:
    """Whether the command line names the run folder (a sweep's folders follow hydra.sweep.dir)."""
    return any(o.split("=", 1)[0].lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir") for o in hydra_overrides)


HYDRA_FILES = (".hydra", "run.log", "config.yaml")  # what a run's folder holds before it trains


def discard_unstarted(out: Path) -> None:
    """Remove the folder of a run refused before it trained: Hydra creates it (``.hydra/``,
    ``run.log``) before any check can run. A folder holding anything else (an earlier run's
    metrics, summary, checkpoint or ledgers) is left as it is."""
    if not out.is_dir() or any(p.name not in HYDRA_FILES and p.suffix != ".log" for p in out.iterdir()):
        return
    import shutil

    logging.shutdown()  # run.log is open in Hydra's file handler
    shutil.rmtree(out, ignore_errors=True)


def precheck(argv: list[str]) -> str | None:
    """Compose and check every run a command line asks for (each combination of a sweep)
    before Hydra creates any folder; the first refusal as one line, else None."""
    from itertools import product

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from common.config import compose

    flags = [a for a in argv if a.startswith("-")]
    if any(f not in ("-m", "--multirun") for f in flags):
        return None  # --cfg, --help, --info …: Hydra's own business
    args = [a for a in argv if not a.startswith("-")]
    ours = [a for a in args if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        parsed = OverridesParser.create().parse_overrides(ours)
    except Exception as e:  # noqa: BLE001 - Hydra's parse errors: shown as one line
        return str(e).strip().splitlines()[0]
    choices = []
    for raw, o in zip(ours, parsed):
        if o.is_sweep_override() and flags:
            key = raw.split("=", 1)[0]
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([raw])
    for combination in product(*choices):
        try:
            compose(list(combination))
        except ValueError as e:
            return str(e)
    return None


def main() -> None:
    problem = precheck(sys.argv[1:])
    if problem is not None:
        print(f"fedrec: error: {problem}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


# An absolute path: a relative one resolves against the caller, which breaks the `fedrec` script.
@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    # Flower logs to its own console handler; through Hydra's root handler too, every line
    # would print twice, DEBUG included.
    logging.getLogger("flwr").propagate = False
    quiet_third_party()
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's state DB set-up chatter
    hc = HydraConfig.get()
    if cfg.get("resume") and not cfg.output_dir and not chosen_run_dir(list(hc.overrides.hydra)):
        # Hydra's default folder is a new timestamp: "resuming" there would silently start over.
        print(
            "fedrec: error: resume=true needs the run folder: hydra.run.dir=RUN_DIR (or output_dir=RUN_DIR)",
            file=sys.stderr,
        )
        sys.exit(2)
    out = Path(cfg.output_dir or hc.runtime.output_dir).resolve()
    task = list(hc.overrides.task)
    cfg = resolved(cfg)  # main() checked the command line's keys first (precheck)
    cfg.output_dir = str(out)
    if cfg.dataset.path:
        cfg.dataset.path = str(Path(cfg.dataset.path).resolve())
    if cfg.privacy.get("ledger_dir"):
        cfg.privacy.ledger_dir = str(Path(cfg.privacy.ledger_dir).resolve())
    position = sweep_position(hc)
    if position:
        print(f"fedrec: sweep {position}: {' '.join(task) or '(defaults)'} -> {out}", flush=True)
    done = completed_summary(cfg, out)
    if done is not None:
        # Re-running a sweep into the same folder skips what already finished.
        print(f"fedrec: {out} already holds a completed run of this exact config; skipped")
        print(format_table([(_name(cfg), done)]))
        print(protection_line(done))
        return
    federated = cfg.baseline is None
    stop_on_interrupt(
        f"stopped; the folder keeps the last completed round ({out}); {resume_hint(task, out, federated)}"
    )
    try:
        summary = execute(cfg, task, out)
    except (DataError, PrivacyConfigError, ModelPathError, ValueError) as e:
        # Bad input: one clear line, no traceback, nothing half-written.
        print(f"fedrec: error: {e}", file=sys.stderr)
        if not cfg.get("resume"):
            discard_unstarted(out)
        sys.exit(2)
    except RunFailed as e:  # it ran but produced no result: the folder keeps its logs
        print(f"fedrec: error: {e} (run folder: {out})", file=sys.stderr)
        sys.exit(1)
    print(format_table([(_name(cfg), summary)]))
    print(protection_line(summary))
    print(f"run folder: {out}")


if __name__ == "__main__":
    main()
