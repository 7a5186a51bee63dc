"""Fault CLI: the catalog listing, and healing after the harness was SIGKILLed mid-fault."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from harness.faults import CATALOG
from tests.conftest import REPO, harness_cli
from tests.faults_support import payload_status, seed, steady_state

ISSUE_CATALOG = {
    "kek_mismatch", "kek_rotation_without_rewrap", "hsm_latency", "hsm_error", "hsm_wrong_pin",
    "hsm_token_absent", "hsm_session_exhaustion", "hsm_key_deleted", "crypto_plugin_removed",
    "acl_removal", "secret_expiry", "container_member_deleted", "consumer_in_use_delete",
    "keystone_outage", "keystone_latency", "db_outage", "db_latency", "kmip_outage", "queue_outage",
    "node_kill", "node_pause", "worker_down",
}


def test_fault_list_shows_every_fault_with_parameters_and_incident():
    listed = json.loads(harness_cli("fault", "list", "--json", check=True).stdout)
    assert ISSUE_CATALOG <= {f["name"] for f in listed}
    assert [f["name"] for f in listed] == sorted(CATALOG)
    for f in listed:
        cls = CATALOG[f["name"]]
        assert f["parameters"] == cls.parameters()
        assert f["incident"] == cls.incident() and len(f["incident"]) > 40, f["name"]
    table = harness_cli("fault", "list", check=True).stdout
    for name in CATALOG:
        assert name in table


def test_bad_fault_parameters_name_the_allowed_ones():
    from harness.faults.base import FaultError
    from harness.faults.engine import make_fault

    with pytest.raises(FaultError) as err:
        make_fault("hsm_latency", {"milliseconds": 5})
    assert "milliseconds" in str(err.value) and "ms (float" in str(err.value)
    with pytest.raises(FaultError) as err:
        make_fault("no_such_fault")
    assert "kek_mismatch" in str(err.value)


HOLD_FAULT = """
import sys, time
from harness.environment import Environment
from harness.faults.engine import FaultEngine
env = Environment.attach(sys.argv[1])
with FaultEngine(env).injected("kek_mismatch", {"node": "2"}):
    print("injected", flush=True)
    time.sleep(600)
"""


@pytest.mark.integration
@pytest.mark.xdist_group("simple-crypto")
def test_sigkill_while_kek_mismatch_is_injected_then_heal_restores_the_kek(env_of):
    env = env_of("simple-crypto")
    seeded = seed(env)
    conf = env.run_dir / "barbican" / "barbican-2" / ".barbican" / "barbican.conf"
    original = env.ctx.secrets.kek
    holder = subprocess.Popen([sys.executable, "-c", HOLD_FAULT, str(env.run_dir)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "injected"
        assert original not in conf.read_text()
        assert payload_status(env, seeded[0].ref, "barbican-2").status_code == 500
    finally:
        holder.send_signal(signal.SIGKILL)  # no finally, no heal in that process
        holder.wait(timeout=10)
    journal = [json.loads(line) for line in (env.run_dir / "faults.jsonl").read_text().splitlines()]
    assert journal[-1]["state"] == "injected"
    out = harness_cli("heal", env.run_id, check=True, timeout=180).stdout
    assert "kek_mismatch" in out
    assert original in conf.read_text()
    env.reload_state()  # `heal` (another process) restarted barbican-2
    steady_state(env, seeded)



RESTART_NODE = """
import sys
from harness.environment import Environment
from harness.target import Capability
Environment.attach(sys.argv[1]).facet(Capability.NODE_CONTROL).restart("barbican-2")
"""


@pytest.mark.integration
@pytest.mark.xdist_group("simple-crypto")
def test_a_node_restarted_elsewhere_is_followed_and_a_dead_one_is_never_signalled_in_vain(env_of):
    """Another harness process restarts barbican-2: this process's record of it is a dead
    child (a zombie until reaped, whose process group still takes signals; seen in CI as a
    pause that froze nothing). The environment follows the state file the other process
    wrote, so the pause freezes the running node. A node killed by hand (no harness
    process recorded anything) is refused by name, not signalled in vain."""
    import os

    import requests

    from harness.errors import HarnessError
    from harness.faults.engine import FaultEngine
    from harness.target import Capability

    env = env_of("simple-crypto")
    url = env.node(2).url + "/healthcheck"
    subprocess.run([sys.executable, "-c", RESTART_NODE, str(env.run_dir)], cwd=REPO, check=True, timeout=120)
    with FaultEngine(env).injected("node_pause", {"node": "2"}):
        with pytest.raises(requests.Timeout):
            requests.get(url, timeout=2)
    assert requests.get(url, timeout=10).status_code == 200

    [pid] = [p["pid"] for p in env.processes() if p["name"] == "barbican-2"]
    os.killpg(pid, signal.SIGKILL)
    try:
        with pytest.raises(HarnessError, match="barbican-2 is not running"):
            with FaultEngine(env).injected("node_pause", {"node": "2"}):
                pass
    finally:
        env.facet(Capability.NODE_CONTROL).restart("barbican-2")
    assert requests.get(url, timeout=10).status_code == 200
