"""The upgrade gate between two real Barbican releases (integration: real services).

FROM is the oldest release that runs on Python 3.11 here (see harness/upgrade.py RELEASES);
its venv is installed by the first run (bounded by BARBICAN_HARNESS_VENV_TIMEOUT) and cached
under ~/.cache/barbican-harness/venvs/, so later runs and CI steps reuse it. TO is the
release the harness runs. Every gate brings its own environment up and down.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import upgrade
from harness.procs import is_running, marked_processes

# A release venv is installed with pip on first use (minutes on a fresh machine).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("upgrade"), pytest.mark.timeout(2400)]

OLDEST = min((r.version for r in upgrade.RELEASES.values() if r.pins and not r.broken), key=upgrade._vkey)
TO = upgrade.harness_barbican_version()
SEEDED_TYPES = {"opaque", "symmetric", "passphrase", "private", "public", "certificate"}


@pytest.fixture(scope="module")
def from_venv():
    """FROM's venv: installed on first use (cached), then asked what it is."""
    return upgrade.probe_release(upgrade.venv_for(OLDEST))


def assert_left_nothing(report: upgrade.GateReport) -> None:
    state = json.loads((Path(report.run_dir) / "state.json").read_text())
    assert state["status"] == "down"
    alive = [p["name"] for p in state["processes"] if is_running(p["pid"], p["create_time"])]
    assert not alive, f"still running after the gate: {alive}"
    assert not marked_processes(report.run_id), "a process of the gate's run survived"


def written_report(report: upgrade.GateReport) -> dict:
    run_dir = Path(report.run_dir)
    text = (run_dir / "upgrade-gate.txt").read_text()
    assert text.rstrip().splitlines()[-1].startswith(report.verdict)
    return json.loads((run_dir / "upgrade-gate.json").read_text())


def seeded_refs(report: upgrade.GateReport) -> set[str]:
    ledger = Path(report.seeded["ledger"])
    refs = set()
    for path in ledger.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["op"] == "create" and entry["outcome"] == "ok":
                refs.add(entry["ref"])
    return refs


def test_gate_passes_between_two_real_releases(from_venv):
    """OLDEST → TO on simple-crypto: FROM really served (each node's /?build), every secret
    type reads back byte-identical on TO through every node, and conformance/api passes."""
    report = upgrade.run_gate(OLDEST, TO)
    assert report.verdict == "PASS", upgrade.summary_text(report)
    assert report.exit_code == 0
    assert set(report.builds["from"].values()) == {OLDEST}
    assert set(report.builds["to"].values()) == {TO}
    assert report.venvs["from"]["prefix"] == str(from_venv.prefix)
    assert SEEDED_TYPES <= set(report.seeded["per_type"])
    assert report.verification["verified"] == report.verification["acknowledged"] == report.seeded["count"]
    assert not report.verification["through_every_node"]
    assert report.preflight["ok"] and not report.unreadable_secrets
    assert report.conformance["ran"] and report.conformance["exit_code"] == 0
    assert report.conformance["tests"] > 100
    assert written_report(report)["verdict"] == "PASS"
    assert_left_nothing(report)


def test_kek_changed_between_from_and_to_fails_naming_the_secrets(from_venv, capsys):
    """--break kek-change through the CLI body: FAIL (exit 1), caught by the preflight
    before TO starts, confirmed by TO: every seeded secret named as unreadable."""
    code = upgrade.upgrade_gate_command(OLDEST, TO, None, "harness", "kek-change", json_out=True)
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["verdict"] == "FAIL" and data["exit_code"] == 1
    refs = {e for e in data["preflight"]["at_risk_secrets"]}
    assert refs and {f["kind"] for f in data["preflight"]["findings"]} == {"primary-kek-missing"}
    assert set(data["unreadable_secrets"]) == refs
    unreadable_failure = next(f for f in data["failures"] if "cannot read back" in f)
    assert all(ref in unreadable_failure for ref in refs)
    assert "InvalidToken" in unreadable_failure
    assert data["conformance"] == {"ran": False, "reason": "the gate already failed"}
    report = upgrade.GateReport(OLDEST, TO, "simple-crypto", "harness", "kek-change",
                                run_id=data["run_id"], run_dir=data["run_dir"], verdict=data["verdict"])
    report.seeded = data["seeded"]
    assert seeded_refs(report) == refs
    assert_left_nothing(report)


def test_default_kek_trap_fails_naming_the_secrets(from_venv):
    """The 2025.2 trap: FROM without a `kek =` line runs on its built-in default KEK; TO
    (21.0.0+) has none. FAIL, found before TO starts, and every simple_crypto secret named."""
    assert from_venv.kek_default, f"Barbican {OLDEST} should still have the built-in default KEK (<= 20.x)"
    assert not upgrade.probe_release(upgrade.venv_for(TO)).kek_default
    report = upgrade.run_gate(OLDEST, TO, from_config="default-kek")
    assert report.verdict == "FAIL" and report.exit_code == 1, upgrade.summary_text(report)
    assert set(report.builds["from"].values()) == {OLDEST}
    trap = [f for f in report.preflight["findings"] if f["kind"] == "default-kek-removed"]
    assert len(trap) == len(report.builds["from"])
    assert "2025.2" in trap[0]["message"] and "no `kek =` line" in trap[0]["message"]
    assert not any(report.preflight["from"]["explicit_kek"].values())
    refs = seeded_refs(report)
    assert refs and set(report.preflight["at_risk_secrets"]) == refs
    assert set(report.unreadable_secrets) == refs
    assert "SimpleCrypto KEK is undefined" in " ".join(report.verification["server_errors"])
    failure = next(f for f in report.failures if "cannot read back" in f)
    assert all(ref in failure for ref in refs)
    assert any(f.startswith("preflight (default-kek-removed), before TO started") for f in report.failures)
    assert not report.new_operations["ok"]  # TO's simple_crypto does not load: an outage too
    assert written_report(report)["verdict"] == "FAIL"
    assert_left_nothing(report)
