"""Issue #17 (items 1, 2, 3, 8, 9): bad input refused in one line before anything starts,
commands on a run that is down, readable output in a pipe, and three failures seen in use."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report.verdicts import Check, VerdictFile
from tests.conftest import REPO, harness_cli, topology


def _refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """A refusal: exit code 2, one line on stderr (no traceback) naming every needle."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def _reports_env(tmp_path: Path) -> dict:
    (tmp_path / "reports" / "runs").mkdir(parents=True, exist_ok=True)
    return {**os.environ, "BARBICAN_HARNESS_REPORTS": str(tmp_path / "reports")}


# -- item 2: a run id names a run directory of the harness, nothing else ------------------------
def test_run_ids_that_leave_the_runs_directory_are_refused_and_nothing_is_written(tmp_path):
    env = _reports_env(tmp_path)
    # A directory outside reports/runs/ that a report would happily be written into.
    victim = tmp_path / "victim"
    victim.mkdir()
    VerdictFile("scenario", "x", True).write(victim)
    for args in (["report", str(victim)], ["report", "../../victim"], ["heal", str(victim)],
                 ["fault", "heal", "--all", "--run", "/etc"]):
        _refused(harness_cli(*args, env=env, timeout=60), "reports/runs/", "no '/'")
    assert sorted(p.name for p in victim.iterdir()) == ["verdict.json"]


# -- item 3: values outside what the topology, the shim and the load accept ---------------------
def _scenario(tmp_path: Path, name: str, env_file: str, event: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nenvironment: {topology(env_file)}\ntimeline:\n  - {event}\n")
    return path


def test_scenario_validate_refuses_functions_and_codes_the_shim_does_not_know_and_absent_nodes(tmp_path):
    cases = [
        (_scenario(tmp_path, "bogus-function", "pkcs11-softhsm",
                   "{at: 1, fault: hsm_error, params: {function: C_Bogus}, heal_at: 5}"),
         ["'function'", "C_Bogus", "C_Decrypt"]),
        (_scenario(tmp_path, "bogus-latency", "pkcs11-softhsm",
                   "{at: 1, fault: hsm_latency, params: {functions: [C_Encrypt, C_Bogus]}}"),
         ["'functions'", "C_Bogus", "C_Encrypt"]),
        (_scenario(tmp_path, "bogus-code", "pkcs11-softhsm",
                   "{at: 1, fault: hsm_error, params: {code: CKR_NO_SUCH_CODE}}"),
         ["'code'", "CKR_NO_SUCH_CODE", "CKR_DEVICE_ERROR"]),
        (_scenario(tmp_path, "node-nine", "simple-crypto", "{at: 1, fault: kek_mismatch, params: {node: '9'}}"),
         ["node '9'", "nodes 1-2"]),
        (_scenario(tmp_path, "node-zero", "simple-crypto", "{at: 1, fault: node_kill, params: {node: 0}}"),
         ["node '0'", "nodes 1-2"]),
    ]
    # A run of decades is a typing error: refused with the bound.
    cases.append((_scenario(tmp_path, "far", "simple-crypto", "{at: 1e9, fault: node_kill}"),
                  ["timeline.0.at", "86400"]))
    proc = harness_cli("scenario", "validate", *(str(path) for path, _ in cases), timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == len(cases), lines  # one line per file
    for line, (path, needles) in zip(lines, cases):
        for needle in (str(path), "timeline.0", *needles):
            assert needle in line, (needle, line)


def test_load_numbers_out_of_range_are_refused_before_any_environment(tmp_path):
    # --env names a file that does not exist: a refusal that names it would mean the numbers
    # were checked only after the environment (here: before its bring-up began).
    base = ["load", "--env", str(tmp_path / "absent.yaml"), "--users", "2", "--duration", "10"]
    _refused(harness_cli(*base, "--spawn-rate", "-1", timeout=60), "--spawn-rate", "more than 0")
    _refused(harness_cli(*base, "--spawn-rate", "1", "--max-error-ratio", "inside:2.5", timeout=60),
             "--max-error-ratio 'inside:2.5'", "between 0 and 1")
    _refused(harness_cli("load", "--env", str(tmp_path / "absent.yaml"), "--users", "2", "--spawn-rate", "1",
                         "--duration", "100000", timeout=60), "--duration", "86400")


# -- item 8: output in a pipe; the report's environment table ------------------------------------
PRINT_CAMPAIGN = """
from harness.campaign import CampaignResult
from harness.cli import print_campaign
incident = {"incident": "kek-mismatch-one-node", "passed": True, "outage_or_data_loss": "data_loss",
            "expected": {"category": "kek_mismatch_or_key_loss", "blast_radius": "existing_secrets_at_risk"},
            "observed": {"category": "kek_mismatch_or_key_loss", "blast_radius": "existing_secrets_at_risk"},
            "evidence": ["barbican-2: HTTP 500 on GET payload of a seeded secret (InvalidToken in its log)"]}
print_campaign(CampaignResult("quick", "/tmp/campaign-x", incidents=[incident], passed=True), "quick")
"""


def test_campaign_tables_are_not_squeezed_when_stdout_is_a_pipe():
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run([sys.executable, "-c", PRINT_CAMPAIGN], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout, proc.stdout
    row = next(line for line in proc.stdout.splitlines() if "kek-mismatch-one-node" in line)
    for cell in ("kek_mismatch_or_key_loss / existing_secrets_at_risk", "data_loss",
                 "barbican-2: HTTP 500 on GET payload of a seeded secret (InvalidToken in its log)", "PASS"):
        assert cell in row, (cell, row)


def test_report_environment_table_of_a_campaign_has_status_and_created(tmp_path):
    env = _reports_env(tmp_path)
    run = tmp_path / "reports" / "runs" / "campaign-quick-20261204-101112-abcd"
    run.mkdir()
    VerdictFile("campaign", "quick (local)", False, ["incident x: ..."],
                [Check("incident", "x", False, "expected a, observed b")]).write(run)
    harness_cli("report", run.name, env=env, check=True, timeout=60)
    html = (run / "report.html").read_text()
    table = re.search(r'<table id="environment">(.*?)</table>', html).group(1)
    cells = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", table))
    assert cells["status"] == "finished: failed"
    assert cells["created"] == "2026-12-04T10:11:12"


# -- item 9: a docker-only scenario in a local catalog run ---------------------------------------
def test_run_on_local_skips_docker_only_scenarios_and_runs_the_rest(tmp_path):
    env = _reports_env(tmp_path)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    docker_only = (REPO / "scenarios" / "node-partitioned.yaml").read_text()
    environment = re.search(r"^environment: (.*)$", docker_only, re.M).group(1)
    (catalog / "node-partitioned.yaml").write_text(docker_only.replace(
        f"environment: {environment}", f"environment: {(REPO / 'scenarios' / environment).resolve()}"))
    # The other scenario runs on local; its topology names a Barbican build that does not
    # exist, so its bring-up stops at once, before anything starts, with one line.
    topo = tmp_path / "no-such-build.yaml"
    topo.write_text(topology("quick-sqlite").read_text().replace(
        "barbican:\n", "barbican:\n  source: wheel:/nonexistent/barbican.whl\n"))
    (catalog / "local-one.yaml").write_text(
        f"name: local-one\nenvironment: {topo}\ntimeline:\n  - {{at: 1, fault: node_kill}}\n")
    proc = harness_cli("run", str(catalog), "--provider", "local", env=env, timeout=120)
    assert re.search(r"skipped: \S*node-partitioned.yaml: scenario 'node-partitioned' runs on docker only",
                     proc.stderr), proc.stderr
    assert "/nonexistent/barbican.whl" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2
    # Nothing the provider can run: refused as a whole, naming the scenario.
    (catalog / "local-one.yaml").unlink()
    _refused(harness_cli("run", str(catalog), "--provider", "local", env=env, timeout=60),
             "node-partitioned", "docker only", "--provider docker")


# -- items 1 and 3 on a run: --node bounds; a run that is down -----------------------------------
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.integration
@pytest.mark.xdist_group("hardening-down-run")
def test_commands_on_a_run_that_is_down_change_nothing_and_a_prepared_fault_starts_nothing():
    from harness.environment import Environment
    from harness.faults.journal import Journal
    from harness.procs import marked_processes, stop_marked

    env = Environment.up(topology("quick-sqlite"))
    run = env.run_id
    conf = env.run_dir / "barbican" / "barbican-1" / ".barbican" / "barbican.conf"
    journal = Journal(env.run_dir)
    try:
        for node in ("0", "9", "barbican-3"):  # item 3: the run has node 1 only
            _refused(harness_cli("fault", "inject", "kek_mismatch", "--node", node, "--run", run, timeout=120),
                     f"node '{node}'", "nodes 1-1 (barbican-1)")
        assert not journal.entries()
        env.down()
        before = _sha(conf)
        for args in (["fault", "inject", "kek_mismatch", "--node", "1", "--run", run],
                     ["load", "--run", run, "--users", "1", "--spawn-rate", "1", "--duration", "5"],
                     ["diagnose", "--run", run]):
            _refused(harness_cli(*args, timeout=60), f"run '{run}' is not up", "nothing was changed")
        assert _sha(conf) == before and not journal.entries() and not marked_processes(run)

        # A harness killed between prepare and inject left a `prepared` entry: the heal
        # of a run that is down closes it and starts nothing.
        fault_id = journal.begin("kek_mismatch", {"node": "1"})
        journal.mark(fault_id, "prepared", undo={"node": "barbican-1"})
        healed = harness_cli("heal", run, timeout=120)
        assert healed.returncode == 0, (healed.stdout, healed.stderr)
        assert re.search(rf"closed \(the run is down: .*nothing started\): {fault_id}", healed.stdout), healed.stdout
        assert journal.entries()[fault_id]["state"] == "closed" and not journal.active()
        assert not marked_processes(run)
        assert _sha(conf) == before
        state = json.loads((env.run_dir / "state.json").read_text())
        assert state["status"] == "down" and not state.get("overrides")
    finally:
        env.down()
        stop_marked(run)


# -- item 9: hsm_key_deleted from the CLI, attached to a run -------------------------------------
@pytest.mark.integration
@pytest.mark.xdist_group("pkcs11-softhsm")
def test_hsm_key_deleted_from_the_cli_on_a_run_it_attaches_to(env_of):
    from tests.faults_support import seed, steady_state

    env = env_of("pkcs11-softhsm")
    seeded = seed(env)
    # expire=ttl: the key goes from the token; the nodes keep serving from their pKEK cache.
    proc = harness_cli("fault", "inject", "hsm_key_deleted", "--param", "expire=ttl", "--run", env.run_id,
                       timeout=180)
    assert proc.returncode == 0, proc.stderr
    fault_id = re.search(r"injected (\S+)", proc.stdout).group(1)
    healed = harness_cli("fault", "heal", fault_id, "--run", env.run_id, timeout=300)
    assert healed.returncode == 0, healed.stderr
    env.reload_state()  # the heal restarted every node in another process
    steady_state(env, seeded)


# -- item 9: the two-node multi-store environment's secret-store rows ----------------------------
@pytest.mark.integration
@pytest.mark.xdist_group("multi-store")
def test_multi_store_secret_store_rows_exist_before_any_node_starts(env_of):
    """Each node syncs the secret_stores table as it starts: two nodes starting on an empty
    table insert the same rows (one bring-up in two failed). The rows must be there before
    the first node starts."""
    env = env_of("multi-store")
    with env.provider.database.connect("barbican") as conn, conn.cursor() as cur:
        cur.execute("SELECT MAX(created_at), COUNT(*) FROM secret_stores")
        newest_row, rows = cur.fetchone()
    assert rows == len(env.ctx.topology.stores)
    first_node = min(p["create_time"] for p in env.state["processes"] if re.fullmatch(r"barbican-\d+", p["name"]))
    started = dt.datetime.fromtimestamp(first_node, dt.timezone.utc).replace(tzinfo=None)
    assert newest_row <= started, (newest_row, started)
