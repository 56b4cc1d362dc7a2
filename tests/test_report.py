"""fedrec report: run folders built here (no simulation), then the CSV, Markdown, HTML, plots."""

from __future__ import annotations

import copy
import csv
import html
import json
import math
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from common.fairness.metrics import client_distribution
from simulations.cli import main as cli
from simulations.report import main as report
from simulations.report.fairness import column

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("utility_vs_epsilon", "metric_per_round", "per_client", "group_ndcg_vs_epsilon")

BASE = {
    "seed": 0,
    "baseline": None,
    "device": "auto",
    "output_dir": "/somewhere",
    "cache_dir": None,
    "dataset": {"name": "synthetic", "path": None, "num_users": 600, "num_items": 400, "seed": 0},
    "partition": {"scheme": "iid", "num_clients": 10},
    "model": {"name": "projection", "dim": 64, "lm": {"path": None, "max_length": 64}},
    "privacy": {
        "enabled": True,
        "epsilon": 8.0,
        "delta": None,
        "lr": 0.01,
        "max_grad_norm": 1.0,
        "accountant": "rdp",
        "noise": "local",
    },
    "secagg": {"enabled": False, "protocol": "none"},
    "strategy": {"name": "fedavg", "num_rounds": 3, "local_epochs": 1, "evaluate_every": 1},
    "train": {"lr": 0.001, "batch_size": 32, "epochs": 20},
}
PRIVACY_NONE = {
    "enabled": False,
    "epsilon": None,
    "delta": None,
    "lr": None,
    "max_grad_norm": None,
    "accountant": "rdp",
    "noise": "none",
}


def ndcg_of(scheme: str, eps: float, seed: int) -> float:
    """The made-up result of a federated run: better with more ε, iid better than dirichlet."""
    base = 0.12 if scheme == "iid" else 0.09
    return base - (0.04 / eps if math.isfinite(eps) else 0.0) + 0.006 * seed


def fairness_of(scheme: str, eps: float, seed: int) -> dict:
    """The made-up fairness block of a federated run (shape of common.fairness.groups.fairness_block):
    DP costs the disadvantaged users more; age is the attribute with the larger gap."""
    ndcg = ndcg_of(scheme, eps, seed)
    adv, dis = ndcg + 0.05, ndcg - (0.02 / eps if math.isfinite(eps) else 0.0)
    group = lambda v, users: {"ndcg@10": v, "hr@10": 2 * v, "users": users}  # noqa: E731
    clients = [ndcg + 0.01 * (c - 4.5) for c in range(10)]
    return {
        "users": {
            "activity": {
                "advantaged": group(adv, 30),
                "disadvantaged": group(dis, 570),
                "gap": {"ndcg@10": adv - dis, "hr@10": 2 * (adv - dis)},
                "threshold": 38,
                "top_share": 0.05,
            },
            "gender": {
                "best": "M",
                "worst": "F",
                "gap": {"ndcg@10": 0.01 + 0.001 * seed, "hr@10": 0.02},
                "groups": {"F": group(ndcg - 0.005, 290), "M": group(ndcg + 0.005, 310)},
            },
            "age": {
                "best": "25-34",
                "worst": "56+",
                "gap": {"ndcg@10": 0.03 + 0.001 * seed, "hr@10": 0.05},
                "groups": {"56+": group(ndcg - 0.02, 40), "25-34": group(ndcg + 0.01, 560)},
            },
        },
        "clients": {str(c): {"users": 60, "ndcg@10": v, "hr@10": 0.2} for c, v in enumerate(clients)},
        "client_distribution": client_distribution(clients),
        "items": {"coverage@10": 0.3 + 0.01 * seed, "exposure_gini@10": 0.8 - ndcg, "long_tail_share@10": ndcg / 2},
    }


def write_run(folder: Path, config: dict, summary: dict | None, rows: list[dict]) -> None:
    folder.mkdir(parents=True)
    config = {**config, "output_dir": str(folder)}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    if rows:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))


def federated(folder: Path, scheme: str, eps: float, seed: int) -> None:
    config = copy.deepcopy(BASE)
    config["seed"] = seed
    config["partition"]["scheme"] = scheme
    if scheme == "dirichlet":
        config["partition"].update(alpha=0.5, num_clusters=10)
    private = math.isfinite(eps)
    if private:
        config["privacy"]["epsilon"] = eps
    else:
        config["privacy"] = dict(PRIVACY_NONE)
    ndcg = ndcg_of(scheme, eps, seed)
    spent = eps * 0.999 if private else None
    rows = [
        {
            "round": r,
            "train_loss": 4.5 - 0.1 * r,
            "epsilon_max": spent and spent * r / 3,
            "seconds": 2.0,
            "bytes_up_per_client": 1000 * r,
            "bytes_down_per_client": 2000,
            "clients": 10,
            "clients_ok": 10,
            "eval_ndcg@10": ndcg - 0.01 * (3 - r),
        }
        for r in (1, 2, 3)
    ]
    summary = {
        "kind": "federated",
        "metrics": {"full": {"ndcg@10": ndcg, "hr@10": 2 * ndcg, "mrr": ndcg * 0.9}, "sampled": {"ndcg@10": 0.3}},
        "eval_users": 600,
        "privacy": {
            "enabled": private,
            "epsilon_max": spent,
            "delta": 1e-4 if private else None,
            "mechanism": "dp-sgd per client (local noise)" if private else "none",
            "per_client": {},
        },
        "timing": {"seconds_total": 6.5, "seconds_per_round": 2.0, "rounds": 3},
        "communication": {"adapter_bytes": 247872},
        "fairness": fairness_of(scheme, eps, seed),
        "data": {"dataset": "synthetic", "users": 600, "items": 400, "clients": 10},
    }
    write_run(folder, config, summary, rows)


def popularity(folder: Path) -> None:
    config = {**copy.deepcopy(BASE), "baseline": "popularity"}  # privacy block still says dp, as real runs do
    summary = {
        "kind": "popularity",
        "metrics": {"full": {"ndcg@10": 0.038, "hr@10": 0.08, "mrr": 0.042}, "sampled": {}},
        "eval_users": 600,
        "privacy": {"enabled": False, "epsilon_max": None, "delta": None, "mechanism": "none"},
        "timing": {"seconds_total": 0.03, "seconds_per_round": None, "rounds": 0},
        "fairness": {},
        "data": {"dataset": "synthetic", "users": 600, "items": 400, "clients": 10},
    }
    write_run(folder, config, summary, [{"round": 0, "eval_ndcg@10": 0.038}])


EXPECTED = {}  # run folder -> (scheme, eps, seed)


def make_sweep(root: Path) -> None:
    for scheme in ("iid", "dirichlet"):
        for eps in (1.0, 4.0, math.inf):
            for seed in (0, 1) if scheme == "iid" else (0,):
                name = f"sweep/{scheme}-{eps:g}-s{seed}"
                EXPECTED[name] = (scheme, eps, seed)
                federated(root / name, scheme, eps, seed)
    popularity(root / "pop")
    crashed = copy.deepcopy(BASE)
    crashed["privacy"]["epsilon"] = 2.0
    write_run(
        root / "sweep" / "crashed",
        crashed,
        None,
        [
            {"round": 1, "train_loss": 4.4},
        ],
    )
    (root / "sweep" / "crashed" / "metrics.jsonl").open("a").write('{"round": 2, "train_lo')  # cut mid-line
    # Hydra's own copy of the config is not a run.
    (root / "pop" / ".hydra").mkdir()
    (root / "pop" / ".hydra" / "config.yaml").write_text("seed: 0\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    make_sweep(root)
    assert report.main([str(root)]) == 0
    rows = list(csv.DictReader((root / "results.csv").open()))
    return root, {r["run"]: r for r in rows}


def test_results_csv_has_one_row_per_run_with_its_values(built):
    root, rows = built
    assert set(rows) == {*EXPECTED, "pop", "sweep/crashed"}
    for name, (scheme, eps, seed) in EXPECTED.items():
        row = rows[name]
        assert row["status"] == "complete" and row["kind"] == "federated" and row["seed"] == str(seed)
        assert float(row["ndcg@10"]) == pytest.approx(ndcg_of(scheme, eps, seed))
        assert row["epsilon"] == "inf" if math.isinf(eps) else float(row["epsilon"]) == pytest.approx(eps * 0.999)
        assert float(row["bytes_up_per_client_per_round"]) == pytest.approx(2000)  # mean of 1000, 2000, 3000
        assert float(row["client_ndcg@10_min"]) == pytest.approx(ndcg_of(scheme, eps, seed) - 0.045)
    assert rows["pop"]["epsilon"] == "inf"
    assert rows["pop"]["label"] == "popularity partition.scheme=iid seed=0"  # no privacy.* keys: unused
    assert rows["sweep/crashed"]["status"] == "incomplete" and rows["sweep/crashed"]["ndcg@10"] == ""
    assert rows["sweep/crashed"]["rounds"] == "1"  # the cut second line is skipped


def test_labels_name_only_the_keys_that_differ(built):
    _, rows = built
    label = rows["sweep/dirichlet-4-s0"]["label"]
    assert label == "federated privacy.epsilon=4 partition.scheme=dirichlet seed=0"
    assert rows["sweep/iid-inf-s1"]["label"] == "federated privacy=none partition.scheme=iid seed=1"
    # The privacy budget and the seed are not part of the setting: ε = 1, 4, ∞ form one curve.
    assert {rows[n]["setting"] for n in EXPECTED if n.startswith("sweep/iid")} == {"federated partition.scheme=iid"}
    assert all("output_dir" not in r["label"] and "alpha" not in r["label"] for r in rows.values())


def test_seeds_of_one_setting_are_averaged(built):
    root, _ = built
    runs = report.find_runs(root)
    report.assign_labels(runs)
    groups = {g.name: g for g in report.group_runs(runs, "ndcg@10")}
    iid4 = groups["federated privacy.epsilon=4 partition.scheme=iid"]
    mean = (ndcg_of("iid", 4.0, 0) + ndcg_of("iid", 4.0, 1)) / 2
    assert len(iid4.values) == 2 and iid4.mean == pytest.approx(mean)
    assert iid4.epsilon == pytest.approx(4 * 0.999)
    assert groups["federated privacy=none partition.scheme=iid"].epsilon == math.inf
    assert len(groups["federated privacy.epsilon=4 partition.scheme=dirichlet"].values) == 1
    assert f"{mean:.4f}" in (root / "report.md").read_text()


def test_markdown_and_html_mention_every_run_and_embed_the_plots(built):
    root, rows = built
    md, page = (root / "report.md").read_text(), (root / "report.html").read_text()
    for row in rows.values():
        assert row["label"] in md
        assert html.escape(row["label"]) in page
    for name in PLOTS:
        assert f"](plots/{name}.png)" in md
        assert f'<img src="plots/{name}.png"' in page
    assert "<script" not in page and "http" not in page  # standalone: no JS, no remote resources
    incomplete = md.split("## Incomplete runs")[1].split("##")[0]
    assert "sweep/crashed" in incomplete and "incomplete" in incomplete
    # Rows sorted by setting, then ε with ∞ last.
    order = [line.split(" | ")[0].lstrip("| ") for line in md.splitlines() if line.startswith("| federated")]
    assert order[:5] == [
        "federated privacy.epsilon=1 partition.scheme=dirichlet seed=0",
        "federated privacy.epsilon=4 partition.scheme=dirichlet seed=0",
        "federated privacy=none partition.scheme=dirichlet seed=0",
        "federated privacy.epsilon=1 partition.scheme=iid seed=0",
        "federated privacy.epsilon=1 partition.scheme=iid seed=1",
    ]


def test_plots_are_valid_pngs(built):
    root, _ = built
    for name in PLOTS:
        path = root / "plots" / f"{name}.png"
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 400
    assert not list(root.rglob(".*.tmp"))  # atomic writes leave no temp file


def test_empty_dir_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "empty") in err
    assert not (tmp_path / "empty" / "report.md").exists()


def test_fedrec_report_cli_writes_to_out(tmp_path, capsys):
    popularity(tmp_path / "runs" / "pop")
    federated(tmp_path / "runs" / "fed", "iid", math.inf, 0)
    assert cli.main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--metric", "hr@10"]) == 0
    out = capsys.readouterr().out
    assert "2 runs: 2 complete, 0 incomplete" in out and str(tmp_path / "out" / "report.html") in out
    for name in ("report.md", "report.html", "results.csv", "plots/per_client.png", "plots/metric_per_round.png"):
        assert (tmp_path / "out" / name).is_file()
    # No DP run: the privacy-utility plot is skipped and the report says why.
    assert not (tmp_path / "out" / "plots" / "utility_vs_epsilon.png").exists()
    assert "utility_vs_epsilon.png not drawn: no run spent a finite ε" in (tmp_path / "out" / "report.md").read_text()
    assert not (tmp_path / "runs" / "report.md").exists()


def test_old_or_partial_summaries_give_dashes(tmp_path, capsys):
    write_run(tmp_path / "old", BASE, {"kind": "federated", "metrics": {"full": {"ndcg@10": None}}}, [])
    assert report.main([str(tmp_path)]) == 0
    row = next(csv.DictReader((tmp_path / "results.csv").open()))
    assert row["status"] == "complete" and row["ndcg@10"] == "" and row["epsilon"] == ""
    assert row["activity_adv_ndcg@10"] == "" and row["coverage@10"] == "" and row["worst_attribute"] == ""
    md = (tmp_path / "report.md").read_text()
    assert "per_client.png not drawn" in md and "group_ndcg_vs_epsilon.png not drawn" in md


def test_fairness_block_with_an_empty_group_or_odd_entries_gives_dashes(tmp_path):
    block = {
        "users": {
            "activity": {
                "advantaged": {"ndcg@10": math.nan, "users": 0},
                "disadvantaged": {"ndcg@10": 0.1},
                "gap": {"ndcg@10": math.nan},
            },
            "gender": {"gap": None},
            "age": "?",
        },
        "items": {"coverage@10": 0.5},
    }
    write_run(tmp_path / "r", BASE, {"kind": "federated", "metrics": {"full": {"ndcg@10": 0.1}}, "fairness": block}, [])
    assert report.main([str(tmp_path)]) == 0
    row = next(csv.DictReader((tmp_path / "results.csv").open()))
    assert row["activity_adv_ndcg@10"] == "" and row["activity_dis_ndcg@10"] == "0.1" and row["coverage@10"] == "0.5"
    assert row["worst_attribute"] == "" and row["clients_gini_ndcg@10"] == ""
    cells = next(iter(fairness_table((tmp_path / "report.md").read_text()).values()))
    assert cells[1:] == ["0.1000", "-", "0.1000", "-", "-", "-", "-", "0.5000", "-", "-"]


def test_a_folder_of_links_gathers_sweeps_once_each(tmp_path):
    from simulations.report.runs import find_runs

    for name in ("a", "b"):
        (tmp_path / "sweeps" / name / "0").mkdir(parents=True)
        (tmp_path / "sweeps" / name / "0" / "config.yaml").write_text(f"seed: 0\nbaseline: {name}\n")
    gather = tmp_path / "gather"
    gather.mkdir()
    (gather / "a").symlink_to(tmp_path / "sweeps" / "a")
    (gather / "a-again").symlink_to(tmp_path / "sweeps" / "a")
    (gather / "b").symlink_to(tmp_path / "sweeps" / "b")
    (gather / "loop").symlink_to(gather)
    assert sorted(r.config["baseline"] for r in find_runs(gather)) == ["a", "b"]


FAIR_COLUMNS = (
    "activity_adv_ndcg@10",
    "activity_dis_ndcg@10",
    "activity_gap_ndcg@10",
    "worst_attribute",
    "worst_attribute_gap_ndcg@10",
    "clients_worst10_ndcg@10",
    "clients_gini_ndcg@10",
    "coverage@10",
    "long_tail_share@10",
    "exposure_gini@10",
)


def expected_fairness(scheme: str, eps: float, seed: int) -> dict:
    """The report's fairness columns of a fixture run, computed here from the fixture's formulas."""
    ndcg = ndcg_of(scheme, eps, seed)
    adv, dis = ndcg + 0.05, ndcg - (0.02 / eps if math.isfinite(eps) else 0.0)
    clients = sorted(ndcg + 0.01 * (c - 4.5) for c in range(10))
    mean = sum(clients) / 10
    gini = sum(abs(a - b) for a in clients for b in clients) / (2 * 10**2 * mean)
    return {
        "activity_adv_ndcg@10": adv,
        "activity_dis_ndcg@10": dis,
        "activity_gap_ndcg@10": adv - dis,
        "worst_attribute": "age",
        "worst_attribute_gap_ndcg@10": 0.03 + 0.001 * seed,
        "clients_worst10_ndcg@10": clients[0],  # ceil(10 % of 10 clients) = the worst one
        "clients_gini_ndcg@10": gini,
        "coverage@10": 0.3 + 0.01 * seed,
        "long_tail_share@10": ndcg / 2,
        "exposure_gini@10": 0.8 - ndcg,
    }


def fairness_table(md: str) -> dict[str, list[str]]:
    section = md.split("## Fairness")[1].split("\n## ")[0]
    rows = [line.strip("| ").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    assert rows[0][:4] == ["run", "ε", "NDCG@10", "NDCG@10 advantaged"]
    return {row[0]: row[1:] for row in rows[1:]}


def test_fairness_columns_and_table_carry_each_runs_values(built):
    root, rows = built
    md = (root / "report.md").read_text()
    table = fairness_table(md)
    assert "top 5 % most active" in md and "Li et al." in md and "80 % least-interacted" in md
    assert md.index("## Runs") < md.index("## Fairness") < md.index("## Mean over seeds")
    for name, (scheme, eps, seed) in EXPECTED.items():
        want, row = expected_fairness(scheme, eps, seed), rows[name]
        assert row["worst_attribute"] == "age"
        for key in FAIR_COLUMNS:
            if key != "worst_attribute":
                assert float(row[key]) == pytest.approx(want[key], abs=1e-12), (name, key)
        cells = table[row["label"]]
        assert cells[0] == ("∞" if math.isinf(eps) else f"{eps * 0.999:.2f}")
        assert float(cells[1]) == pytest.approx(ndcg_of(scheme, eps, seed), abs=5.01e-5)
        shown = [float(c) for c in cells[2:5] + cells[6:]]  # 4 decimals: within half a unit of the last
        assert shown == pytest.approx([want[k] for k in FAIR_COLUMNS[:3] + FAIR_COLUMNS[5:]], abs=5.01e-5)
        assert all(len(c.split(".")[1]) == 4 for c in cells[2:5] + cells[6:])
        assert cells[5] == f"age {want['worst_attribute_gap_ndcg@10']:.4f}"
        assert f"{row['label']} + UGF re-rank" not in table  # no eval.rerank in these runs
    # The popularity run's summary has an empty fairness block: dashes and empty CSV cells.
    assert table[rows["pop"]["label"]][2:] == ["-"] * 9
    assert all(rows["pop"][k] == "" for k in FAIR_COLUMNS)
    assert rows["sweep/crashed"]["activity_adv_ndcg@10"] == ""  # incomplete: in the CSV, not in the table
    assert rows["sweep/crashed"]["label"] not in table


def test_group_ndcg_plot_averages_seeds_per_setting_and_has_the_relative_panel(built):
    root, _ = built
    runs = report.find_runs(root)
    report.assign_labels(runs)
    # The plot's points: the shared grouping with the fairness value in place of the metric.
    groups = {g.name: g for g in report.group_runs(runs, column("activity_dis_ndcg@10"))}
    iid4 = groups["federated privacy.epsilon=4 partition.scheme=iid"]
    assert iid4.mean == pytest.approx(sum(expected_fairness("iid", 4.0, s)["activity_dis_ndcg@10"] for s in (0, 1)) / 2)
    assert "popularity partition.scheme=iid" not in groups  # no activity groups in its summary
    image = matplotlib.image.imread(root / "plots" / "group_ndcg_vs_epsilon.png")
    assert image.shape[1] > 1400  # two panels: every setting has an ε = ∞ run to compare with
    caption = (root / "report.md").read_text().split("](plots/group_ndcg_vs_epsilon.png)")[1]
    assert "disadvantaged (dashed)" in caption and "Bagdasaryan" in caption


def test_group_ndcg_plot_is_skipped_without_activity_groups(tmp_path):
    old = copy.deepcopy(BASE)
    for eps in (1.0, 8.0):
        old["privacy"]["epsilon"] = eps
        summary = {
            "kind": "federated",
            "metrics": {"full": {"ndcg@10": 0.1}},
            "privacy": {"enabled": True, "epsilon_max": eps},
            "fairness": {"clients": {"0": {"ndcg@10": 0.1}}},
        }
        write_run(tmp_path / f"eps{eps:g}", old, summary, [])
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "group_ndcg_vs_epsilon.png not drawn: no run reports NDCG@10 per activity group" in md
    assert not (tmp_path / "plots" / "group_ndcg_vs_epsilon.png").exists()
    assert (tmp_path / "plots" / "utility_vs_epsilon.png").is_file()
    assert "No run's summary.json has a fairness block" in md.split("## Fairness")[1]


def test_a_reranked_run_gets_a_second_fairness_row_and_csv_columns(tmp_path):
    def block(adv: float, dis: float) -> dict:
        return {
            "users": {
                "activity": {
                    "advantaged": {"ndcg@10": adv, "users": 5},
                    "disadvantaged": {"ndcg@10": dis},
                    "gap": {"ndcg@10": adv - dis},
                }
            },
            "items": {"coverage@10": 0.4},
        }

    fairness = {**block(0.02, 0.05), "rerank": {"method": "ugf", **block(0.03, 0.045)}}
    summary = {
        "kind": "federated",
        "metrics": {"full": {"ndcg@10": 0.048}, "rerank": {"ndcg@10": 0.046}},
        "fairness": fairness,
    }
    write_run(tmp_path / "r", BASE, summary, [])
    assert report.main([str(tmp_path)]) == 0
    row = next(csv.DictReader((tmp_path / "results.csv").open()))
    assert float(row["rerank_ndcg@10"]) == 0.046 and float(row["rerank_activity_gap_ndcg@10"]) == pytest.approx(-0.015)
    assert float(row["activity_gap_ndcg@10"]) == pytest.approx(-0.03)
    table = fairness_table((tmp_path / "report.md").read_text())
    plain = table[row["label"]]
    reranked = table[f"{row['label']} + UGF re-rank"]
    assert plain[1:5] == ["0.0480", "0.0200", "0.0500", "-0.0300"]
    assert reranked[1:5] == ["0.0460", "0.0300", "0.0450", "-0.0150"]


def test_a_failed_run_is_listed_with_its_reason(tmp_path):
    from simulations.report.runs import load_run

    run = tmp_path / "sweep" / "diverged"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "failed.txt").write_text("the final model is not finite (2 of 7 tensors hold NaN or Inf)\n")
    loaded = load_run(tmp_path, run)
    assert (
        not loaded.complete and loaded.note == "failed: the final model is not finite (2 of 7 tensors hold NaN or Inf)"
    )
