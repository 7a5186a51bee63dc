"""The upgrade gate between real Barbican builds (integration: real services).

FROM venvs are installed by the first run (bounded by BARBICAN_HARNESS_VENV_TIMEOUT) and
cached under ~/.cache/barbican-harness/venvs/, so later runs and CI steps reuse them: this
module needs 14.0.0 (the oldest that runs on Python 3.11), 20.0.0 and 22.0.0. TO is the
release the harness runs. Every gate brings its own environment up and down.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.builds import own_build, resolve, version_key
from harness.builds.releases import RELEASES
from harness.procs import is_running, marked_processes
from harness.upgrade.command import upgrade_gate_command
from harness.upgrade.gate import run_gate
from harness.upgrade.report import GateReport, summary_text
from harness.upgrade.rolling import RollingPlan
from tests.conftest import harness_cli, topology

# A release venv is installed with pip on first use (minutes on a fresh machine).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("upgrade"), pytest.mark.timeout(2400)]

OLDEST = min((v for v, r in RELEASES.items() if not r.broken), key=version_key)
TO = own_build().version
SEEDED_TYPES = {"opaque", "symmetric", "passphrase", "private", "public", "certificate"}


@pytest.fixture(scope="module")
def from_build():
    """FROM's venv: installed on first use (cached), then asked what it is."""
    return resolve(OLDEST)


def assert_left_nothing(report) -> None:
    state = json.loads((Path(report.run_dir) / "state.json").read_text())
    assert state["status"] == "down"
    alive = [p["name"] for p in state["processes"] if is_running(p["pid"], p["create_time"])]
    assert not alive, f"still running after the gate: {alive}"
    assert not marked_processes(report.run_id), "a process of the gate's run survived"


def written_report(report) -> dict:
    run_dir = Path(report.run_dir)
    text = (run_dir / "upgrade-gate.txt").read_text()
    assert text.rstrip().splitlines()[-1].startswith(report.verdict)
    return json.loads((run_dir / "upgrade-gate.json").read_text())


def seeded_refs(seeded: dict) -> set[str]:
    refs = set()
    for path in Path(seeded["ledger"]).glob("*.jsonl"):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["op"] == "create" and entry["outcome"] == "ok":
                refs.add(entry["ref"])
    return refs


def assert_hop_kept_every_secret(report: GateReport, hop) -> None:
    assert hop.ok, summary_text(report)
    assert hop.verification["verified"] == hop.verification["acknowledged"] == report.seeded["count"]
    assert not hop.verification["through_every_node"] and not hop.unreadable_secrets
    assert hop.new_operations == {"ok": True, "errors": {}}


def test_gate_passes_between_two_real_releases(from_build):
    """OLDEST → TO on simple-crypto: FROM really served (each node's /?build), every secret
    type reads back byte-identical on TO through every node, and conformance/api passes."""
    report = run_gate([OLDEST, TO])
    assert report.verdict == "PASS", summary_text(report)
    assert report.exit_code == 0
    assert set(report.from_versions.values()) == {OLDEST}
    [hop] = report.hops
    assert set(hop.versions.values()) == {TO}
    assert report.builds[0]["prefix"] == from_build.prefix and report.builds[1]["own"]
    assert SEEDED_TYPES <= set(report.seeded["per_type"])
    assert_hop_kept_every_secret(report, hop)
    assert hop.preflight["ok"]
    assert hop.db_revision["before"] != hop.db_revision["after"]
    assert report.conformance["ran"] and report.conformance["ok"] and report.conformance["exit_code"] == 0
    assert report.conformance["counts"]["tests"] > 100
    assert written_report(report)["verdict"] == "PASS"
    assert "Upgrade gate" in Path(report.report_html).read_text()
    assert_left_nothing(report)


def test_kek_changed_between_from_and_to_fails_naming_the_secrets(from_build, capsys):
    """--break kek-change through the command body: FAIL (exit 1), caught by the preflight
    before TO starts, confirmed by TO: every seeded secret named as unreadable."""
    code = upgrade_gate_command([OLDEST, TO], None, break_mode="kek-change", json_out=True)
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["verdict"] == "FAIL" and data["exit_code"] == 1
    [hop] = data["hops"]
    refs = set(hop["preflight"]["at_risk_secrets"])
    assert refs and {f["kind"] for f in hop["preflight"]["findings"]} == {"primary-kek-missing"}
    assert set(hop["unreadable_secrets"]) == refs
    unreadable_failure = next(f for f in data["failures"] if "cannot read back" in f)
    assert all(ref in unreadable_failure for ref in refs)
    assert "InvalidToken" in unreadable_failure
    assert data["conformance"] == {"ran": False, "reason": "the gate already failed"}
    assert seeded_refs(data["seeded"]) == refs
    assert_left_nothing(GateReport(data["path"], data["topology"], run_id=data["run_id"], run_dir=data["run_dir"]))


def test_default_kek_trap_fails_naming_the_secrets(from_build):
    """The 2025.2 trap: FROM without a `kek =` line runs on its built-in default KEK; TO
    (21.0.0+) has none. FAIL, found before TO starts, and every simple_crypto secret named."""
    assert from_build.kek_default, f"Barbican {OLDEST} should still have the built-in default KEK (<= 20.x)"
    assert not own_build().ensure_facts().kek_default
    report = run_gate([OLDEST, TO], from_config="default-kek")
    assert report.verdict == "FAIL" and report.exit_code == 1, summary_text(report)
    assert set(report.from_versions.values()) == {OLDEST}
    [hop] = report.hops
    trap = [f for f in hop.preflight["findings"] if f["kind"] == "default-kek-removed"]
    assert len(trap) == len(report.from_versions)
    assert "2025.2" in trap[0]["message"] and "no `kek =` line" in trap[0]["message"]
    assert not any(hop.preflight["from"]["explicit_kek"].values())
    refs = seeded_refs(report.seeded)
    assert refs and set(hop.preflight["at_risk_secrets"]) == refs
    assert set(hop.unreadable_secrets) == refs
    assert "SimpleCrypto KEK is undefined" in " ".join(hop.verification["server_errors"])
    failure = next(f for f in report.failures if "cannot read back" in f)
    assert all(ref in failure for ref in refs)
    assert any(f.startswith("preflight (default-kek-removed), before") for f in report.failures)
    assert not hop.new_operations["ok"]  # TO's simple_crypto does not load: an outage too
    assert written_report(report)["verdict"] == "FAIL"
    assert_left_nothing(report)


def test_two_hop_path_verifies_the_ledger_at_each_hop():
    """--path 20.0.0,22.0.0,TO (the 2025.1 and 2026.1 SLURP releases, then the harness's):
    every node runs each build in turn, the schema moves, and every seeded secret reads back
    byte-identical through every node after each hop."""
    path = ["20.0.0", "22.0.0", TO]
    report = run_gate(path, conformance=False)
    assert report.verdict == "PASS", summary_text(report)
    assert [b["version"] for b in report.builds] == path
    assert set(report.from_versions.values()) == {"20.0.0"}
    assert [(h.from_build, h.to_build) for h in report.hops] == [("20.0.0", "22.0.0"), ("22.0.0", TO)]
    for hop, version in zip(report.hops, path[1:]):
        assert set(hop.versions.values()) == {version}
        assert_hop_kept_every_secret(report, hop)
    assert report.hops[0].db_revision["after"] == report.hops[1].db_revision["before"]
    written = written_report(report)
    assert [h["verification"]["verified"] for h in written["hops"]] == [report.seeded["count"]] * 2
    assert_left_nothing(report)


def test_pkcs11_topology_is_gated_from_20_0_0():
    """pkcs11 on SoftHSM: 22.0.0 → TO keeps every secret of the p11_crypto store (the
    database says p11_crypto holds them); a FROM without key_wrap_mechanism is refused
    before anything starts (ERROR, exit 2)."""
    report = run_gate(["22.0.0", TO], topology("pkcs11-softhsm"), conformance=False)
    assert report.verdict == "PASS", summary_text(report)
    assert set(report.seeded["per_store"]) == {"hsm"} and report.seeded["count"] > 0
    assert list(report.seeded["per_crypto_plugin"]) == ["barbican.plugin.crypto.p11_crypto.P11CryptoPlugin"]
    assert_hop_kept_every_secret(report, report.hops[0])
    assert_left_nothing(report)

    refused = run_gate([OLDEST, TO], topology("pkcs11-softhsm"))
    assert refused.verdict == "ERROR" and refused.exit_code == 2 and refused.run_id is None
    assert "key_wrap_mechanism" in refused.error and OLDEST in refused.error


def test_bad_paths_are_one_line_before_anything_starts():
    """Wrong sources, a downgrade, --rolling on two nodes: exit 2 with one line naming what
    is wrong; nothing is installed or started."""
    cases = [
        (["--from", "22.0.0", "--to", "21.0.0"], "does not downgrade"),
        (["--path", "22.0.0"], "at least two builds"),
        (["--from", "svn:x", "--to", TO], "unknown kind 'svn'"),
        (["--from", "wheel:/nonexistent/barbican-1-py3-none-any.whl", "--to", TO], "no such file"),
        (["--from", "22.0.0", "--to", TO, "--rolling", "--env", str(topology("simple-crypto"))], "3 or more"),
        (["--from", "22.0.0", "--to", TO, "--max-error-ratio", "node:0.1"], "options of --rolling"),
        (["--from", "22.0.0", "--to", TO, "--rolling", "--max-error-ratio", "web:0.1"], "phase 'web'"),
        (["--from", "22.0.0", "--path", "22.0.0,23.0.0"], "not both"),
        (["--from", "22.0.0", "--to", TO, "--behaviour-accept", "accepted.yaml"], "an option of --behaviour"),
        (["--from", "22.0.0", "--to", TO, "--behaviour", "--behaviour-accept", "/nonexistent/accepted.yaml"],
         "/nonexistent/accepted.yaml: cannot read it"),
    ]
    for args, expected in cases:
        proc = harness_cli("upgrade-gate", *args, timeout=120)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert expected in proc.stdout + proc.stderr, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr


@pytest.mark.xdist_group("upgrade-rolling")
def test_rolling_upgrade_under_load_has_figures_per_phase():
    """22.0.0 → TO on three nodes under Locust load: the schema upgrade while 22.0.0 serves,
    then node by node; every phase has its own error ratio and p95 (JSON and report.html),
    the verdict follows from them, and the load's ledger is checked on TO."""
    report = run_gate(["22.0.0", TO], topology("simple-crypto-3"), conformance=False, rolling=RollingPlan(users=8))
    [hop] = report.hops
    rolling = hop.rolling
    kinds = [p["kind"] for p in rolling["phases"]]
    assert kinds == ["from", "db", "node", "node", "node", "to"], summary_text(report)
    for p in rolling["phases"]:
        assert p["requests"] > 0 and p["p95_ms"] is not None, p
        assert p["to_s"] > p["from_s"]
        assert p["ok"] == (not p["breaches"] and not p["error"])
    nodes = [p["phase"].split(" ")[0] for p in rolling["phases"] if p["kind"] == "node"]
    assert nodes == ["barbican-1", "barbican-2", "barbican-3"]
    assert rolling["load"]["ledger"]["ok"], rolling["load"]["ledger"]
    assert rolling["zero_downtime"] == report.zero_downtime == (
        all(p["ok"] for p in rolling["phases"]) and not rolling["finished_after_load"] and not rolling["load"]["errors"])
    assert set(hop.versions.values()) == {TO}
    assert_hop_kept_every_secret(report, hop)
    written = written_report(report)
    assert written["hops"][0]["rolling"]["phases"] == rolling["phases"]
    html = Path(report.report_html).read_text()
    assert 'id="phases-1"' in html and "barbican-2 → " in html and "zero-downtime" in html
    assert report.verdict == ("PASS" if report.zero_downtime else "FAIL")
    assert_left_nothing(report)


@pytest.mark.xdist_group("upgrade-docker")
def test_docker_gate_runs_from_on_an_image_of_its_build(docker_client):
    """The docker provider: FROM 22.0.0 runs from an image built on the python image with
    22.0.0's venv (once per machine); the hop recreates each node's container on TO's image."""
    report = run_gate(["22.0.0", TO], topology("simple-crypto"), provider="docker", conformance=False)
    assert report.verdict == "PASS", summary_text(report)
    assert report.provider == "docker"
    assert report.builds[0]["image"].startswith("barbican-harness/barbican-build:")
    assert set(report.from_versions.values()) == {"22.0.0"}
    assert set(report.hops[0].versions.values()) == {TO}
    assert_hop_kept_every_secret(report, report.hops[0])
    assert not docker_client.containers.list(all=True, filters={"label": f"barbican-harness.run={report.run_id}"})


@pytest.mark.soak
@pytest.mark.xdist_group("upgrade-rolling")
def test_rolling_upgrade_across_a_skip_level_pair():
    """20.0.0 → 22.0.0 (SLURP to SLURP) rolling: the same figures; what it measures is the
    result (README: measured per-phase error ratios)."""
    report = run_gate(["20.0.0", "22.0.0"], topology("simple-crypto-3"), conformance=False, rolling=RollingPlan())
    phases = report.hops[0].rolling["phases"]
    assert [p["kind"] for p in phases] == ["from", "db", "node", "node", "node", "to"], summary_text(report)
    assert all(p["requests"] > 0 for p in phases)
    assert_hop_kept_every_secret(report, report.hops[0])
    assert_left_nothing(report)
