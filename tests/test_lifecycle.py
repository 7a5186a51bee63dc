"""up/down through the CLI: nothing is left behind, even after the CLI is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from harness.ports import port_is_free
from harness.procs import RUN_MARKER, is_running, marked_processes
from tests.conftest import CLI, REPO, cli_json, harness_cli, topology

pytestmark = pytest.mark.integration


def assert_nothing_left(state: dict) -> None:
    procs = state["processes"]
    assert procs, "the state file recorded no process"
    alive = [p for p in procs if is_running(p["pid"], p["create_time"])]
    assert not alive, f"still running: {alive}"
    busy = [port for p in procs for port in p["ports"] if not port_is_free(port)]
    assert not busy, f"ports still in use: {busy}"
    assert not marked_processes(state["run_id"]), "a process carrying the run marker survived"


def load_state(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "state.json").read_text())


@pytest.mark.xdist_group("cli-lifecycle")
def test_up_json_status_json_then_down_leaves_nothing():
    summary = cli_json("up", str(topology("simple-crypto")))
    try:
        for key in ("run_id", "run_dir", "clouds_yaml", "clouds", "nodes", "pids"):
            assert key in summary
        assert [n["name"] for n in summary["nodes"]] == ["barbican-1", "barbican-2"]
        assert all(n["endpoint"].startswith("http://127.0.0.1:") and n["pid"] for n in summary["nodes"])
        assert set(summary["pids"]) >= {"mariadb", "keystone", "barbican-1", "barbican-2"}
        assert summary["clouds"]["creator"]["barbican-2"].endswith("barbican-2-creator")
        status = cli_json("status", summary["run_id"])
        assert status["status"] == "up"
        assert all(p["running"] for p in status["processes"])
        # logs: masked tail of a service log
        logs = harness_cli("logs", "barbican-1", "--run", summary["run_id"], check=True).stdout
        assert "uWSGI" in logs or "barbican" in logs
    finally:
        down = harness_cli("down", summary["run_id"], check=True)
    assert "down" in down.stdout
    assert_nothing_left(load_state(summary["run_dir"]))
    # down is idempotent
    assert harness_cli("down", summary["run_id"]).returncode == 0


@pytest.mark.xdist_group("cli-lifecycle")
def test_sigkill_of_the_cli_during_up_then_down_leaves_nothing(tmp_path):
    env = {**os.environ, "BARBICAN_HARNESS_REPORTS": str(tmp_path)}
    cli = subprocess.Popen([*CLI, "up", str(topology("simple-crypto"))], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run_dir = None
    deadline = time.monotonic() + 120
    try:
        # Kill it mid-way: once MariaDB and Keystone are running and Barbican is starting.
        while time.monotonic() < deadline:
            states = list((tmp_path / "runs").glob("*/state.json"))
            if states:
                run_dir = states[0].parent
                try:
                    names = {p["name"] for p in load_state(run_dir).get("processes", [])}
                except json.JSONDecodeError:
                    names = set()
                if {"mariadb", "keystone"} <= names:
                    break
            time.sleep(0.05)
        else:
            pytest.fail(f"the CLI never got to start Keystone: {list(tmp_path.rglob('state.json'))}")
    finally:
        cli.send_signal(signal.SIGKILL)
        cli.wait(timeout=10)
    assert run_dir is not None
    before = load_state(run_dir)
    assert any(is_running(p["pid"], p["create_time"]) for p in before["processes"]), \
        "SIGKILL of the CLI should leave its services running until down"
    proc = harness_cli("down", run_dir.name, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_nothing_left(load_state(run_dir))
    leftovers = [p.pid for p in psutil.process_iter() if _has_marker(p, run_dir.name)]
    assert not leftovers


def _has_marker(p: psutil.Process, run_id: str) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE and p.environ().get(RUN_MARKER) == run_id
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def test_missing_program_names_the_debian_package(tmp_path):
    # A PATH with everything but mariadb-install-db: the venv and mariadbd only. (SoftHSM
    # tokens are initialised through PKCS#11 itself, softhsm2-util is no longer needed.)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in ("/usr/bin", "/usr/sbin"):
        if Path(d, "mariadbd").exists():
            (bindir / "mariadbd").symlink_to(Path(d, "mariadbd"))
            break
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{bindir}",
           "BARBICAN_HARNESS_REPORTS": str(tmp_path / "reports")}
    proc = harness_cli("up", str(topology("pkcs11-softhsm")), env=env, timeout=120)
    assert proc.returncode == 2
    assert "mariadb-install-db not found" in proc.stderr
    assert "apt-get install -y mariadb-server" in proc.stderr
    # Checked before anything started or was written.
    assert not (tmp_path / "reports" / "runs").exists() or not any((tmp_path / "reports" / "runs").iterdir())


def test_misspelt_topology_field_fails_before_anything_starts(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(topology("simple-crypto").read_text().replace("threads:", "thread:"))
    env = {**os.environ, "BARBICAN_HARNESS_REPORTS": str(tmp_path / "reports")}
    proc = harness_cli("up", str(bad), env=env, timeout=60)
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "barbican.thread" in proc.stderr and "did you mean 'threads'" in proc.stderr
    assert not (tmp_path / "reports").exists()
