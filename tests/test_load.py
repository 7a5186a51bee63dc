"""Load with faults on real services: Locust only as subprocesses (never imported here:
its gevent monkey-patching breaks pytest), every test bounded in time.

(a)+(b) one 60 s run on pkcs11-softhsm through the command line: an hsm_latency window
        (300 ms on C_Encrypt/C_Decrypt, 15 → 30 s) and a node_kill window (35 → 45 s).
        Its data shows both windows and the latency rise inside the HSM one, the ledger
        loses nothing after heal, and the error-ratio threshold 0 (breached by the killed
        node's refused connections) makes the command exit 1 naming the threshold and the
        measured value.
(c)     --workers 2: a master and two workers; the merged totals equal the per-worker
        statistics and reach the report.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("load")]

LOAD_CLI = [sys.executable, "-m", "harness.load.cli"]


def load_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """`barbican-harness load` once harness.cli has it; the same command module until then."""
    from harness.cli import app

    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    argv = [sys.executable, "-m", "harness.cli", "load"] if "load" in names else LOAD_CLI
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          stdin=subprocess.DEVNULL)


def test_hsm_latency_and_node_kill_windows_with_threshold_breach(env_of, tmp_path):
    env = env_of("pkcs11-softhsm")
    scenario = tmp_path / "load-faults.yaml"
    scenario.write_text(
        "timeline:\n"
        "  - {at: 15, fault: hsm_latency, params: {functions: [C_Encrypt, C_Decrypt], ms: 300}, heal_at: 30}\n"
        "  - {at: 35, fault: node_kill, params: {node: '2'}, heal_at: 45}\n")
    started = time.monotonic()
    proc = load_cli("--run", env.run_id, "--scenario", str(scenario), "--users", "12", "--spawn-rate", "12",
                    "--duration", "60s", "--seed", "7", "--max-error-ratio", "0",
                    "--max-p95-ms", "outside:luks.key_payload=60000", timeout=240)
    took = time.monotonic() - started
    env.reload_state()  # the command restarted node 2: pick up its new process
    out = proc.stdout
    assert proc.returncode == 1, f"exit {proc.returncode}\n{out}\n{proc.stderr[-3000:]}"
    # (b) the breach names the threshold and the measured value
    breach = re.search(r"BREACH: threshold 'max-error-ratio 0' breached by '([^']+)' inside fault windows "
                       r"\(hsm_latency, node_kill\): measured error ratio (\d\.\d+) \((\d+)/(\d+) requests failed", out)
    assert breach, out
    assert float(breach.group(2)) > 0 and int(breach.group(3)) > 0
    assert "ConnectionRefusedError" in out
    assert took < 200, f"the 60 s load took {took:.0f} s"

    result_path = Path(re.search(r"results: (\S+result\.json)", out).group(1))
    result = json.loads(result_path.read_text())
    windows = {w["fault"]: w for w in result["windows"]}
    assert set(windows) == {"hsm_latency", "node_kill"}
    for w in windows.values():
        assert w["error"] is None and w["injected_rel"] is not None and w["healed_rel"] is not None
    assert 14 <= windows["hsm_latency"]["injected_rel"] <= 17 and 29 <= windows["hsm_latency"]["healed_rel"] <= 33
    assert 34 <= windows["node_kill"]["injected_rel"] <= 37 and windows["node_kill"]["healed_rel"] >= 44

    # the latency rise inside the HSM window, on the reads that decrypt through the HSM
    hsm = next(w for w in result["window_stats"] if w["fault"] == "hsm_latency")["stats"]["luks.key_payload"]
    outside = result["phase_stats"]["outside"]["luks.key_payload"]
    assert hsm["requests"] >= 10 and outside["requests"] >= 10
    assert hsm["p50_ms"] >= outside["p50_ms"] + 150, (hsm, outside)
    assert hsm["failures"] == 0  # slower, not failing
    killed = next(w for w in result["window_stats"] if w["fault"] == "node_kill")["stats"]["Aggregated"]
    assert killed["errors"].get("ConnectionRefusedError", 0) > 0
    assert killed["nodes"]["barbican-2"][1] > 0
    assert result["hsm"]["functions"]["C_Decrypt"]["calls"] > 0

    # the ledger: nothing lost after heal
    ledger = result["ledger"]
    assert ledger["ok"], ledger
    assert ledger["acknowledged"] > 20 and ledger["verified"] == ledger["acknowledged"]
    assert not (ledger["lost"] or ledger["corrupted"] or ledger["resurrected"] or ledger["unexpected"])
    assert ledger["deletes_verified"] > 0

    # the report shows both windows; allure and junit carry the breach
    report = (env.run_dir / "report.html").read_text()
    for needle in ('data-fault="hsm_latency"', 'data-fault="node_kill"', 'data-chart="latency"',
                   'data-chart="errors"', 'data-chart="hsm"', f'id="ledger-{result_path.parent.name}"'):
        assert needle in report, needle
    junit = (env.run_dir / "junit.xml").read_text()
    assert re.search(r'<testcase [^>]*name="threshold max-error-ratio 0"[^>]*>\s*<failure message="threshold', junit)
    cats = {c["name"] for c in json.loads((env.run_dir / "allure-results" / "categories.json").read_text())}
    assert {"healthy", "kek_mismatch_or_key_loss", "hsm_unreachable", "hsm_degraded", "acl_permission",
            "expiration", "auth_outage", "backend_outage", "orders_stalled"} <= cats
    props = (env.run_dir / "allure-results" / "environment.properties").read_text()
    assert "barbican.version=" in props and "backend=pkcs11" in props and "seed=" in props
    assert env.ctx.secrets.hsm_pin not in report and env.ctx.secrets.user_password not in report


def test_distributed_master_and_two_workers_reach_the_report(env_of):
    from harness.load.driver import run_load
    from harness.report import build_report

    env = env_of("pkcs11-softhsm")
    env.reload_state()
    result = run_load(env, users=8, spawn_rate=8, duration=15, workers=2, seed=11)
    assert result.errors == [], result.errors
    pids = result.locust["pids"]
    assert set(pids) == {"locust-master", "locust-worker-1", "locust-worker-2"}
    assert result.locust["exit_code"] == 0 and result.locust["worker_exit_codes"] == [0, 0]
    # each worker generated load (its own statistics and ledger files) ...
    series = sorted((result.out_dir / "series").glob("series-*.jsonl"))
    assert len(series) == 2 and all(p.stat().st_size > 0 for p in series)
    ledgers = [p for p in (result.out_dir / "ledger").glob("*.jsonl")]
    assert len(ledgers) >= 3  # the driver's fixtures + one per worker
    # ... and the master's merged totals are exactly the sum of theirs
    merged = next(s for s in result.locust["stats"] if s["name"] == "Aggregated")
    ours = result.phase_stats["all"]["Aggregated"]
    assert merged["requests"] == ours["requests"] > 50
    assert merged["failures"] == ours["failures"]
    assert result.ledger["ok"], result.ledger

    report = build_report(env.run_dir).read_text()
    section = report[report.index(f'id="load-{result.out_dir.name}"'):]
    assert "master + 2 workers" in section[:2000]
    merged_table = section[section.index(f'id="locust-{result.out_dir.name}"'):]
    merged_table = merged_table[:merged_table.index("</table>")]
    assert f"<td>Aggregated</td><td class=\"num\">{merged['requests']:,}</td>" in merged_table
