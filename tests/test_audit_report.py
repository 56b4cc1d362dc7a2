"""fedrec audit report / verify / keygen: run folders built here (no training), then the
report's facts, its flags, and the Ed25519 signature against tampering."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.privacy.ledger import accountants_agree
from simulations.audit import identity as audit_identity
from simulations.audit import report as audit_report
from simulations.audit.signing import SignatureError, canonical_bytes, generate_keypair, sign_json, verify_json

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
EPS = [4.722849502094714, 6.5602804809878155, 7.999139521308661]  # a real 3-round run at ε = 8

CONFIG = {
    "seed": 0,
    "baseline": None,
    "output_dir": "/somewhere",
    "dataset": {"name": "synthetic", "path": None, "num_users": 120, "num_items": 400, "seed": 0},
    "partition": {"scheme": "iid", "num_clients": 3},
    "privacy": {
        "enabled": True,
        "epsilon": 8.0,
        "delta": None,
        "accountant": "rdp",
        "noise": "local",
        "budget_epsilon": None,
        "seeded_noise": False,
        "secure_mode": False,
    },
    "secagg": {"enabled": False, "protocol": "none"},
    "strategy": {"name": "fedavg", "num_rounds": 3, "local_epochs": 1},
}


def make_run(
    folder: Path,
    clients: int = 3,
    ledger: bool = True,
    audit: bool = True,
    private: bool = True,
    over_budget: dict | None = None,
    check_off: dict | None = None,
) -> Path:
    """A completed run folder. ``over_budget`` {client: ε} replaces its last ledger ε;
    ``check_off`` {client: factor} scales its second accountant's ε."""
    over_budget, check_off = over_budget or {}, check_off or {}
    folder.mkdir(parents=True)
    config = copy.deepcopy(CONFIG)
    config["partition"]["num_clients"] = clients
    if not private:
        config["privacy"] = {"enabled": False, "epsilon": None, "delta": None, "accountant": "rdp", "noise": "none"}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    rows, metrics, per_client = [], [], {}
    for r, eps in enumerate(EPS, start=1):
        eps_of = {c: (over_budget.get(c, eps) if r == 3 else eps) for c in range(clients)}
        for c in range(clients):
            rows.append(
                {
                    "client_id": c,
                    "round": r,
                    "status": "trained",
                    "steps": 2,
                    "steps_total": 2 * r,
                    "sample_rate": 0.5,
                    "noise_multiplier": 0.98388671875,
                    "epsilon": eps_of[c],
                    "epsilon_check": eps_of[c] * check_off.get(c, 1.0),
                    "accountant": "rdp",
                    "check_accountant": "dp-accounting rdp",
                    "agree": abs(check_off.get(c, 1.0) - 1) <= 0.01,
                    "delta": 1e-4,
                    "budget_epsilon": 8.0,
                }
            )
        metrics.append(
            {
                "round": r,
                "epsilon_max": max(eps_of.values()),
                "epsilon_per_client": {str(c): e for c, e in eps_of.items()},
            }
        )
    for c in range(clients):
        last = rows[-clients + c]
        per_client[str(c)] = {
            "epsilon": last["epsilon"],
            "delta": 1e-4,
            "noise_multiplier": 0.98388671875,
            "sample_rate": 0.5,
            "steps": 6,
            "users": 40,
            "epsilon_check": last["epsilon_check"],
            "check_accountant": "dp-accounting rdp",
            "budget_epsilon": 8.0,
        }
    summary = {
        "kind": "federated",
        "metrics": {"full": {"ndcg@10": 0.12}},
        "privacy": {
            "unit": "user",
            "enabled": private,
            "mechanism": "dp-sgd per client (local noise)" if private else "none",
            "accountant": "rdp" if private else None,
            "epsilon_target": 8.0 if private else None,
            "delta": 1e-4 if private else None,
            "epsilon_max": max(p["epsilon"] for p in per_client.values()) if private else None,
            "per_client": per_client if private else {},
        },
        "secure_aggregation": None,
        "timing": {"rounds": 3},
        "data": {
            "dataset": "synthetic",
            "users": 40 * clients,
            "items": 400,
            "clients": clients,
            "client_users": [40] * clients,
        },
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if ledger and private:
        (folder / "privacy_ledger.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    if audit:
        (folder / "audit").mkdir()
        lb, auc = (0.9, 0.51) if private else (3.1, 0.83)
        (folder / "audit" / "audit.json").write_text(
            json.dumps(
                {
                    "run": str(folder),
                    "private": private,
                    "epsilon_theory": 8.0 if private else None,
                    "delta": 1e-4,
                    "canaries": {
                        "m": 200,
                        "included": 97,
                        "guesses": 40,
                        "correct": 36,
                        "k_plus": 20,
                        "k_minus": 20,
                        "confidence": 0.95,
                        "epsilon_lower_bound": lb,
                        "method": "one-run (Steinke et al. 2023)",
                    },
                    "mia": {
                        "members": 470,
                        "non_members": 473,
                        "auc": auc,
                        "roc": {"fpr": [0.0, 0.3, 0.6, 1.0], "tpr": [0.0, 0.3 + (auc - 0.5), 0.62, 1.0]},
                    },
                    "train_dir": "audit/train",
                    "seconds": 123.4,
                    "violation": False,
                }
            )
        )
    return folder


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    return generate_keypair(folder / "k.pem", folder / "k.pub.pem")


def payload_of(run: Path) -> dict:
    return json.loads((run / "audit" / "report.json").read_text())["payload"]


def test_report_covers_every_client_with_both_accountants_and_the_audit(tmp_path):
    run = make_run(tmp_path / "run", clients=4)
    written = audit_report.write_report(run)
    p = payload_of(run)
    assert set(p["budget"]["clients"]) == {"0", "1", "2", "3"}
    for c in p["budget"]["clients"].values():
        assert c["users"] == 40 and c["steps"] == 6 and c["agree"] is True and c["status"] == "exhausted"
        assert c["refused_rounds"] == [] and c["exceeded_rounds"] == []
    assert p["budget"]["source"] == "privacy_ledger.jsonl" and not p["budget"]["exceeded"]
    assert not [f for f in p["findings"] if f["level"] == "red"]
    assert p["audit"]["run"] and p["audit"]["canaries"]["epsilon_lower_bound"] == 0.9 and not p["audit"]["violation"]
    assert "consistent with the guarantee" in p["audit"]["interpretation"]
    assert "not a proof of privacy" in p["audit"]["interpretation"]
    assert p["privacy"]["delta_ok"] is True and p["privacy"]["units_protected"] == 160
    # The threat model is read from docs/threat-model.md at report time, for this run's noise mode.
    assert any(q.startswith("`privacy.noise=local`") for q in p["threat_model"]["quotes"])
    assert p["secure_aggregation"]["statement"] == "none: the server sees each client's update"
    assert any("63 bits of OS entropy" in limit for limit in p["known_limits"])
    md, page = (run / "audit" / "report.md").read_text(), (run / "audit" / "report.html").read_text()
    for cid in "0123":
        assert f"\n| {cid} | 40 | 6 |" in md
    assert "UNSIGNED" in md and "UNSIGNED" in page and p["plots"]["mia_roc"]["file"] == "plots/mia_roc.png"
    for name in ("epsilon_per_round", "mia_roc"):
        assert (run / "audit" / "plots" / f"{name}.png").read_bytes().startswith(PNG)
    assert json.loads((run / "audit" / "report.json").read_text())["signature"] is None
    assert {path.name for path in written} >= {"report.json", "report.md", "report.html"}


def test_a_ledger_row_above_budget_is_exceeded(tmp_path):
    run = make_run(tmp_path / "run", over_budget={1: 8.0 + 1e-6})
    audit_report.write_report(run)
    p = payload_of(run)
    assert p["budget"]["exceeded"] and p["budget"]["status"] == "EXCEEDED"
    assert p["budget"]["clients"]["1"]["status"] == "EXCEEDED" and p["budget"]["clients"]["1"]["exceeded_rounds"] == [3]
    assert p["budget"]["clients"]["0"]["status"] == "exhausted"
    assert any(f["level"] == "red" and "EXCEEDED" in f["text"] for f in p["findings"])
    md, page = (run / "audit" / "report.md").read_text(), (run / "audit" / "report.html").read_text()
    assert "**RED FLAG: Budget EXCEEDED" in md and '<td class="alarm">EXCEEDED</td>' in page


def test_within_rounding_of_the_budget_is_not_exceeded(tmp_path):
    run = make_run(tmp_path / "run", over_budget={0: 8.0 + 1e-10})
    audit_report.write_report(run)
    assert not payload_of(run)["budget"]["exceeded"]


@pytest.mark.parametrize("factor, exceeded", [(1 + 1e-10, False), (1 + 5e-10, False), (1.001, True)])
def test_exceeded_is_the_clients_own_relative_rule(tmp_path, factor, exceeded):
    # common.privacy.ledger.within_budget: ε ≤ budget × (1 + 1e-9); 8 × (1 + 5e-10) is 4e-9 over the
    # budget, above an absolute 1e-9, and still rounding for the client, so not EXCEEDED here either.
    run = make_run(tmp_path / "run", over_budget={0: 8.0 * factor})
    audit_report.write_report(run)
    client = payload_of(run)["budget"]["clients"]["0"]
    assert payload_of(run)["budget"]["exceeded"] is exceeded
    assert client["status"] == ("EXCEEDED" if exceeded else "exhausted")
    assert client["exceeded_rounds"] == ([3] if exceeded else [])


def test_accountants_agree_by_the_ledgers_rule(tmp_path):
    assert accountants_agree(8.0, 8.079) and not accountants_agree(8.0, 8.09)  # 1 % relative
    assert accountants_agree(0.5, 0.515) and not accountants_agree(0.5, 0.525)  # 0.02 absolute at small ε
    assert accountants_agree(float("inf"), float("inf")) and not accountants_agree(float("inf"), 8.0)
    # In the report: small ε whose check is 0.015 higher (3-6 %) agrees, as the client's ledger said.
    run = make_run(tmp_path / "run")
    ledger = run / "privacy_ledger.jsonl"
    rows = [json.loads(line) for line in ledger.read_text().splitlines()]
    for r in rows:
        r["epsilon"] *= 0.05
        r["epsilon_check"] = r["epsilon"] + (0.015 if r["client_id"] == 0 else 0.0)
    ledger.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    audit_report.write_report(run)
    budget = payload_of(run)["budget"]
    assert budget["clients"]["0"]["agree"] is True and budget["clients"]["0"]["max_relative_difference"] > 0.01
    assert budget["accountants_disagree"] == []


def test_accountants_disagreeing_by_more_than_one_percent_are_flagged(tmp_path):
    run = make_run(tmp_path / "run", check_off={2: 1.02, 1: 1.009})
    audit_report.write_report(run)
    p = payload_of(run)
    assert p["budget"]["accountants_disagree"] == ["2"]
    assert p["budget"]["clients"]["1"]["agree"] is True  # 0.9 % is within tolerance
    assert any(f["level"] == "red" and "DISAGREE" in f["text"] for f in p["findings"])
    assert "| NO (1.96%) |" in (run / "audit" / "report.md").read_text()


def test_signed_report_verifies_and_any_change_fails(tmp_path, keys, capsys):
    private, public = keys
    run = make_run(tmp_path / "run")
    audit_report.write_report(run, key=private)
    report = run / "audit" / "report.json"
    payload, changed = audit_report.verify_report(report, public)
    assert changed == [] and payload["budget"]["clients"]["0"]["epsilon"] == EPS[-1]
    assert "UNSIGNED" not in (run / "audit" / "report.md").read_text()
    assert audit_report.main(["verify", str(report), str(public)]) == 0
    original = json.loads(report.read_text())

    tampered = copy.deepcopy(original)  # one digit of one client's ε
    eps = tampered["payload"]["budget"]["clients"]["0"]["epsilon"]
    tampered["payload"]["budget"]["clients"]["0"]["epsilon"] = float(repr(eps).replace("7.99", "6.99", 1))
    with pytest.raises(SignatureError, match="changed after signing"):
        verify_json(tampered, public)
    report.write_text(json.dumps(tampered, indent=2))
    capsys.readouterr()
    assert audit_report.main(["verify", str(report), str(public)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "verification FAILED" in err

    tampered = copy.deepcopy(original)  # the signature itself
    value = tampered["signature"]["value"]
    tampered["signature"]["value"] = ("B" if value[0] == "A" else "A") + value[1:]
    with pytest.raises(SignatureError):
        verify_json(tampered, public)

    other = generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub.pem")[1]
    with pytest.raises(SignatureError, match="another key"):
        verify_json(original, other)
    resigned = sign_json(original["payload"], tmp_path / "other.pem")
    with pytest.raises(SignatureError, match="another key"):
        verify_json(resigned, public)

    for bad in (
        {**original, "note": "unsigned addition"},
        {"payload": original["payload"], "signature": None},
        {**original, "signature": {**original["signature"], "algorithm": "RSA"}},
        [1, 2],
    ):
        with pytest.raises(SignatureError):
            verify_json(bad, public)


def test_edited_rendering_or_run_file_is_reported_by_verify(tmp_path, keys, capsys):
    private, public = keys
    run = make_run(tmp_path / "run")
    audit_report.write_report(run, key=private)
    md = run / "audit" / "report.md"
    assert "| 7.999 (rdp) |" in md.read_text()
    md.write_text(md.read_text().replace("| 7.999 (rdp) |", "| 6.999 (rdp) |"))
    (run / "summary.json").write_text((run / "summary.json").read_text() + " ")
    _, changed = audit_report.verify_report(run / "audit" / "report.json", public)
    assert any("report.md does not match" in c for c in changed) and any("summary.json changed" in c for c in changed)
    assert audit_report.main(["verify", str(run / "audit" / "report.json"), str(public)]) == 1


def test_signature_covers_the_canonical_serialisation(keys):
    private, public = keys
    doc = sign_json({"b": [1, 2.5, "é"], "a": {"y": None, "x": True}}, private)
    reordered = {"signature": doc["signature"], "payload": {"a": {"x": True, "y": None}, "b": [1, 2.5, "é"]}}
    verify_json(json.loads(json.dumps(reordered, indent=4)), public)
    assert canonical_bytes(doc["payload"]) == '{"a":{"x":true,"y":null},"b":[1,2.5,"é"]}'.encode()
    with pytest.raises(ValueError, match="not plain JSON"):
        sign_json({"eps": float("inf")}, private)


def test_keygen_refuses_to_overwrite_and_keeps_the_private_key_private(tmp_path, capsys):
    folder = tmp_path / "keys"
    assert audit_report.main(["keygen", str(folder)]) == 0
    private = folder / "fedrec_audit_ed25519.pem"
    public = folder / "fedrec_audit_ed25519.pub.pem"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    before = private.read_bytes()
    capsys.readouterr()
    assert audit_report.main(["keygen", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and private.read_bytes() == before
    assert audit_report.main(["keygen", str(folder), "--force"]) == 0
    assert private.read_bytes() != before and stat.S_IMODE(os.stat(private).st_mode) == 0o600


def test_config_hash_changes_with_the_config_and_not_with_its_layout(tmp_path):
    a = make_run(tmp_path / "a")
    config = yaml.safe_load((a / "config.yaml").read_text())
    same = audit_report.config_sha256(yaml.safe_load(yaml.safe_dump(config, sort_keys=False, indent=4)))
    assert same == audit_report.config_sha256(config)
    changed = copy.deepcopy(config)
    changed["privacy"]["epsilon"] = 4.0
    assert audit_report.config_sha256(changed) != audit_report.config_sha256(config)
    b = make_run(tmp_path / "b")
    (b / "config.yaml").write_text(yaml.safe_dump(changed))
    audit_report.write_report(a)
    audit_report.write_report(b)
    assert payload_of(a)["run"]["config_sha256"] != payload_of(b)["run"]["config_sha256"]


def test_data_fingerprint_covers_the_files_of_dataset_path(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "interactions.csv").write_text("user_id,item_id,timestamp\n1,2,3\n")
    (data / "items.csv").write_text("item_id,text\n2,a film\n")
    config = {"dataset": {"name": "csv", "path": str(data)}}
    first = audit_identity.data_fingerprint(config, tmp_path)
    assert [f["name"] for f in first["files"]] == ["interactions.csv", "items.csv"]
    (data / "items.csv").write_text("item_id,text\n2,another film\n")
    assert audit_identity.data_fingerprint(config, tmp_path)["sha256"] != first["sha256"]
    missing = audit_identity.data_fingerprint({"dataset": {"name": "csv", "path": str(tmp_path / "gone")}}, tmp_path)
    assert missing["sha256"] is None and "not found" in missing["note"]


def test_without_audit_or_ledger_the_report_says_so(tmp_path):
    run = make_run(tmp_path / "run", audit=False, ledger=False)
    written = audit_report.write_report(run)
    p = payload_of(run)
    assert p["audit"]["run"] is False and p["plots"]["mia_roc"]["file"] is None
    assert p["budget"]["source"].startswith("no ledger") and p["budget"]["clients"]["2"]["refused_rounds"] is None
    assert p["budget"]["epsilon_per_round"]["0"][-1][1] == EPS[-1]  # from metrics.jsonl
    md = (run / "audit" / "report.md").read_text()
    assert "The audit was not run" in md and "no ledger" in md
    assert not (run / "audit" / "plots" / "mia_roc.png").exists() and len(written) == 4


def test_positive_control_is_shown_beside_the_audit(tmp_path):
    run, control = make_run(tmp_path / "run"), make_run(tmp_path / "control", private=False)
    audit_report.write_report(run, control=control)
    p = payload_of(run)
    assert p["audit"]["control"]["canaries"]["epsilon_lower_bound"] == 3.1 and p["audit"]["control"]["private"] is False
    assert "does detect leakage" in p["audit"]["interpretation"]
    assert "| ε lower bound | 0.9 | 3.1 |" in (run / "audit" / "report.md").read_text()
    # The non-private run's own report says so in red.
    audit_report.write_report(control)
    reds = [f["text"] for f in payload_of(control)["findings"] if f["level"] == "red"]
    assert any("NOT differentially private" in text for text in reds)


def test_bad_input_is_one_line_naming_the_file_and_field(tmp_path, keys, capsys):
    run = make_run(tmp_path / "run")
    audit = json.loads((run / "audit" / "audit.json").read_text())
    audit["canaries"]["epsilon_lower_bound"] = "high"
    (run / "audit" / "audit.json").write_text(json.dumps(audit))
    assert audit_report.main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "audit.json: field canaries.epsilon_lower_bound" in err
    (run / "summary.json").unlink()
    assert audit_report.main(["report", str(run)]) == 2
    assert "summary.json: not found (the run did not complete)" in capsys.readouterr().err
    assert audit_report.main(["report", str(run), "--key", str(keys[1])]) == 2  # a public key cannot sign
    assert "not a PEM private key" in capsys.readouterr().err


def test_module_command_line_exits_non_zero_on_a_tampered_report(tmp_path, keys):
    private, public = keys
    run = make_run(tmp_path / "run")
    audit_report.write_report(run, key=private)
    report = run / "audit" / "report.json"
    report.write_text(report.read_text().replace('"epsilon_lower_bound": 0.9', '"epsilon_lower_bound": 0.8'))
    out = subprocess.run(
        [sys.executable, "-m", "simulations.audit.report", "verify", str(report), str(public)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "verification FAILED" in out.stderr


@pytest.mark.parametrize("noise", ["distributed", "central"])
def test_secure_aggregation_and_noise_mode_shape_the_statements(tmp_path, noise):
    run = make_run(tmp_path / "run", ledger=False)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["privacy"]["noise"] = noise
    config["secagg"] = {
        "enabled": True,
        "protocol": "secagg+",
        "num_shares": 1.0,
        "reconstruction_threshold": 0.6,
        "clipping_range": 8.0,
        "quantization_range": 4194304,
        "modulus_range": 4294967296,
        "update_clip_norm": 8.0,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    audit_report.write_report(run)
    p = payload_of(run)
    assert p["secure_aggregation"]["settings"]["reconstruction_threshold"] == 0.6
    assert any(q.startswith("**Collusion threshold.**") for q in p["threat_model"]["quotes"])
    assert any(q.startswith(f"`privacy.noise={noise}`") for q in p["threat_model"]["quotes"])
    assert any("32 bits" in limit for limit in p["known_limits"])
    if noise == "central":
        assert "NOT against the server" in p["privacy"]["statement"] and p["privacy"]["units_protected"] == 3
    else:
        assert any("subtract their noise shares" in limit for limit in p["known_limits"])


def test_an_infinite_budget_renders_without_a_spent_share(tmp_path):
    run = make_run(tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["privacy"]["budget_epsilon"] = float("inf")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    # The server writes non-finite numbers as null (JSON has no Infinity).
    rows = [json.loads(line) for line in (run / "privacy_ledger.jsonl").read_text().splitlines()]
    (run / "privacy_ledger.jsonl").write_text("".join(json.dumps({**r, "budget_epsilon": None}) + "\n" for r in rows))
    audit_report.write_report(run)
    p = payload_of(run)
    assert not p["budget"]["exceeded"]
    assert "EXCEEDED" not in (run / "audit" / "report.md").read_text()
