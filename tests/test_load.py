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

def load_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """`barbican-harness load ARGS` in its own process."""
    return subprocess.run([sys.executable, "-m", "harness.cli", "load", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


@pytest.mark.integration
@pytest.mark.xdist_group("load")
def test_hsm_latency_and_node_kill_windows_with_threshold_breach(env_of, tmp_path):
    env = env_of("pkcs11-softhsm")
    scenario = tmp_path / "load-faults.yaml"
    scenario.write_text(
        "timeline:\n"
        "  - {at: 15, fault: hsm_latency, params: {functions: [C_Encrypt, C_Decrypt], ms: 300}, heal_at: 30}\n"
        "  - {at: 35, fault: node_kill, params: {node: '2'}, heal_at: 45}\n")
    started = time.monotonic()
    proc = load_cli("--run", env.run_id, "--scenario", str(scenario), "--users", "12", "--spawn-rate", "12",
                    "--duration", "60s", "--seed", "7", "--max-error-ratio", "0", "--weight", "orders=2",
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
    # every consumer class of the mix ran (Octavia, Cinder/Nova, tenants' CRUD, orders)
    assert result["params"]["weights"]["orders"] == 2
    outside_names = result["phase_stats"]["outside"]
    for name in ("octavia.container", "luks.key_payload", "secret.create", "order.create"):
        assert outside_names.get(name, {}).get("requests", 0) > 0, (name, sorted(outside_names))
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


@pytest.mark.integration
@pytest.mark.xdist_group("load")
def test_distributed_master_and_two_workers_reach_the_report(env_of):
    from harness.load_driver.driver import run_load
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


@pytest.mark.integration
@pytest.mark.xdist_group("simple-crypto")
def test_a_stretched_load_runs_as_much_longer_as_its_timeline_is_late(env_of):
    """A node killed at 1 s and restarted at 2 s (a restart takes seconds), then paused at 2 s:
    the pause starts as late as the restart took. With stretch (as a rolling upgrade runs)
    Locust runs that much longer, so the planned 4 s after the pause still carry load."""
    from harness.load_driver.driver import run_load
    from harness.load_driver.series import AGGREGATED, Series, overlaps
    from harness.timeline import Event

    env = env_of("simple-crypto")
    events = [Event(at=1, fault="node_kill", params={"node": "2"}, heal_at=2),
              Event(at=2, fault="node_pause", params={"node": "2"}, heal_at=3)]
    result = run_load(env, users=2, spawn_rate=2, duration=6, timeline_events=events, seed=3, stretch=True)
    kill, pause = result.windows
    late = pause["injected_at"] - pause["planned_at"]
    assert late > 1.0, result.windows  # the restart held the timeline up
    assert result.params["stretched_s"] == pytest.approx(late, abs=0.1)
    ran = result.ended_wall - result.started_wall
    assert ran >= 6 + late - 0.5, (ran, late)
    assert pause["healed_wall"] is not None and pause["healed_wall"] < result.ended_wall
    assert result.locust["exit_code"] == 0, result.errors
    series = Series.load(result.out_dir / "series")
    tail = series.merged(AGGREGATED, [s for s in series.seconds if overlaps(s, pause["healed_wall"], result.ended_wall)])
    assert tail.n > 0, "no request after the last step: the load was not stretched"


# -- the pure parts: no service, no Locust ------------------------------------------------------
def test_threshold_and_duration_syntax():
    from harness.errors import HarnessError
    from harness.load_driver.cli import build_thresholds, parse_duration

    assert [parse_duration(t) for t in ("60", "60s", "2m", "1m30s", "1h")] == [60, 60, 120, 90, 3600]
    with pytest.raises(HarnessError, match="--duration 'soon'"):
        parse_duration("soon")
    ths = build_thresholds(["0.01", "outside:0.001", "inside:secret.create=0.5"],
                           ["secret.create=500", "inside:*=2000"])
    assert [(t.metric, t.limit, t.name, t.phase) for t in ths] == [
        ("error_ratio", 0.01, "*", "all"), ("error_ratio", 0.001, "*", "outside"),
        ("error_ratio", 0.5, "secret.create", "inside"), ("p95_ms", 500, "secret.create", "all"),
        ("p95_ms", 2000, "*", "inside")]
    with pytest.raises(HarnessError, match="--max-p95-ms 'fast'"):
        build_thresholds([], ["fast"])


def test_breach_names_threshold_and_measured_value_inside_and_outside():
    from harness.load_driver.thresholds import Threshold, evaluate

    stats = {"inside": {"secret.create": {"requests": 40, "failures": 10, "error_ratio": 0.25, "p95_ms": 900.0,
                                          "errors": {"ConnectionRefusedError": 10}},
                        "Aggregated": {"requests": 40, "failures": 10, "error_ratio": 0.25, "p95_ms": 900.0}},
             "outside": {"secret.create": {"requests": 100, "failures": 0, "error_ratio": 0.0, "p95_ms": 80.0},
                         "Aggregated": {"requests": 100, "failures": 0, "error_ratio": 0.0, "p95_ms": 80.0}}}
    ratio, p95 = evaluate([Threshold("error_ratio", 0.05), Threshold("p95_ms", 500, "secret.create", "outside")],
                          stats, ["node_kill"])
    assert not ratio.passed and p95.passed
    assert [(c.name, c.phase, c.passed) for c in ratio.checks] == [
        ("secret.create", "inside", False), ("Aggregated", "inside", False),
        ("secret.create", "outside", True), ("Aggregated", "outside", True)]
    assert ratio.breaches[0].message == (
        "threshold 'max-error-ratio 0.05' breached by 'secret.create' inside fault windows (node_kill): "
        "measured error ratio 0.2500 (10/40 requests failed; errors: ConnectionRefusedError x10) > limit 0.05")


def test_series_merge_and_percentiles_match_locust(tmp_path):
    from harness.load_driver.series import (
        AGGREGATED,
        Series,
        SeriesRecorder,
        overlaps,
        percentile,
    )

    a = SeriesRecorder(tmp_path)
    for i in range(100):
        a.add(1000.2, "secret.create", "POST", float(i + 1), failed=i < 5, error="HTTP 500", node="barbican-1")
    a.flush()
    (tmp_path / "series-other.jsonl").write_text(  # another process's file
        '{"t": 1001, "name": "secret.create", "method": "POST", "n": 2, "f": 1, "rt_sum": 3000, '
        '"hist": {"1000": 1, "2000": 1}, "errors": {"TimeoutError": 1}, "nodes": {"barbican-2": [2, 1]}}\n'
        '{"t": 1001, "name": "secret.cre')  # a process killed mid-write leaves half a line
    s = Series.load(tmp_path)
    total = s.total()
    assert (total.n, total.f) == (102, 6) and total.errors == {"HTTP 500": 5, "TimeoutError": 1}
    assert s.cells[(1000, AGGREGATED)].percentile(0.95) == 96.0  # what locust.stats.calculate_response_time_percentile gives
    assert percentile(s.cells[(1001, "secret.create")].hist, 2, 0.5) == 2000.0  # Locust: the upper one
    assert total.nodes == {"barbican-1": [100, 5], "barbican-2": [2, 1]}
    assert overlaps(1000, 1000.9, 1005) and not overlaps(1000, 1001.0, 1005) and not overlaps(1005, 1000, 1005)


def test_scenario_timeline_checked_before_anything_starts(tmp_path):
    from harness.errors import HarnessError
    from harness.timeline import read_fault_timeline as read_timeline

    good = tmp_path / "ok.yaml"
    good.write_text("duration: 30\ntimeline:\n  - {at: 5, fault: node_kill, params: {node: '2'}, heal_at: 10}\n")
    events, duration = read_timeline(good)
    assert duration == 30 and [(e.at, e.fault, e.params, e.heal_at) for e in events] == [
        (5.0, "node_kill", {"node": "2"}, 10.0)]
    for body, why in (("timeline: []\nx: 1", None), ("steps: []", "top-level 'timeline:'"),
                      ("timeline:\n  - {at: 1, fault: no_such_fault}", "no_such_fault"),
                      ("timeline:\n  - {at: 1, fault: node_kill, params: {colour: red}}", "colour"),
                      ("timeline:\n  - {at: 5, fault: node_kill, heal_at: 2}", "heal_at"),
                      ("timeline:\n  - {at: 1, operation: rotate_simple_crypto_kek}", "operations")):
        f = tmp_path / "bad.yaml"
        f.write_text(body)
        if why is None:
            assert read_timeline(f) == ([], None)
            continue
        with pytest.raises(HarnessError, match=why):
            read_timeline(f)


def test_weights_are_validated_before_anything_starts():
    from harness.errors import HarnessError
    from harness.load_driver.cli import parse_weights

    assert parse_weights(["luks=8", "orders=0"]) == {"luks": 8, "orders": 0}
    for bad in (["luks"], ["luks=-1"], ["nova=1"], ["octavia=0", "luks=0", "crud=0", "orders=0"]):
        with pytest.raises(HarnessError):
            parse_weights(bad)
