"""Issue 13: every command on a Barbican the harness did not start, known only through
clouds.yaml and a targets file (here: the worker's simple-crypto environment, used only
that way). Driven through the CLI as an operator would: load with thresholds, a scenario,
the preprod campaign, refusals before start, dry runs that change nothing, and `heal`
after the CLI was killed in a fault window."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from harness.faults.journal import Journal
from tests.conftest import CLI, REPO, harness_cli, project_resources

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("simple-crypto"), pytest.mark.timeout(1200)]

ROLES = ("creator", "other-creator", "service", "admin")


@pytest.fixture
def cloud(env_of, tmp_path):
    """(cloud name, targets file, process environment, the environment behind it)."""
    env = env_of("simple-crypto")
    targets = tmp_path / "targets.yaml"
    targets.write_text(yaml.safe_dump({
        "policy": "legacy", "backends": ["simple_crypto"],
        "nodes": {n.name: n.url for n in env.nodes},
        "clouds": {role: f"{env.run_id}-{role}" for role in ROLES}}))
    environ = {**os.environ, "OS_CLIENT_CONFIG_FILE": env.state["clouds_yaml"]}
    return f"{env.run_id}-creator", targets, environ, env


def cli(cloud, *args, timeout=600):
    name, targets, environ, _ = cloud
    return harness_cli(*args, "--cloud", name, "--targets", str(targets), env=environ, timeout=timeout)


def everything(env) -> set[str]:
    return project_resources(env, ROLES)


def state_dir(cloud):
    from harness.environment import runs_dir

    return runs_dir() / f"cloud-{cloud[0]}"


def test_load_with_thresholds_and_nothing_left_behind(cloud):
    before = everything(cloud[3])
    proc = cli(cloud, "load", "--users", "4", "--spawn-rate", "4", "--duration", "20",
               "--max-error-ratio", "0.01", "--max-p95-ms", "Aggregated=5000")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ledger: nothing lost" in proc.stdout and "PASS" in proc.stdout
    result = json.loads(sorted((state_dir(cloud) / "load").glob("*/result.json"))[-1].read_text())
    assert result["ok"] and result["params"]["cleaned_up"]["failed"] == 0
    assert result["params"]["cleaned_up"]["secrets"] >= 16  # the fixtures, at least
    assert everything(cloud[3]) == before


def test_an_acl_removal_scenario_runs_and_cleans_up(cloud):
    before = everything(cloud[3])
    proc = cli(cloud, "run", str(REPO / "scenarios" / "acl-removed-octavia.yaml"), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads(proc.stdout)
    assert result["passed"] and result["verdict"]["category"] == "acl_permission"
    assert everything(cloud[3]) == before


def test_preprod_campaign(cloud):
    before = everything(cloud[3])
    proc = cli(cloud, "campaign", "--profile", "preprod", timeout=1100)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = " ".join(proc.stdout.split())
    assert "round trips 4 byte-identical" in out
    # The incidents a bare cloud cannot take are named with what they need, not run.
    assert "not run on this target: expired-secret-consumed" in out and "'database'" in out
    run_dir = out.split("results: ")[1].split()[0].rsplit("/", 1)[0]
    campaign = json.loads(open(f"{run_dir}/campaign.json").read())
    assert [i["incident"] for i in campaign["incidents"]] == ["acl-removed-octavia"]
    assert campaign["passed"] and campaign["load"]["summary"]["ok"]
    assert everything(cloud[3]) == before


def test_destructive_and_foreign_changes_are_refused_before_anything(cloud):
    env = cloud[3]
    journal = Journal(state_dir(cloud))
    before = journal.path.read_text() if journal.path.exists() else ""
    proc = cli(cloud, "fault", "inject", "kek_mismatch", "--node", "1")
    assert proc.returncode == 2 and "needs capability 'config_write'" in " ".join(proc.stderr.split())
    # An API-state fault on a secret the harness did not write is someone else's data.
    ref = env.barbican().secrets.create(name="operator-owned", payload=b"x" * 16).store()
    try:
        proc = cli(cloud, "fault", "inject", "acl_removal", "--param", f"ref={ref}")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "not a resource this harness wrote" in " ".join(proc.stderr.split())
        assert "Traceback" not in proc.stderr
    finally:
        env.barbican().secrets.delete(ref)
    after = journal.path.read_text() if journal.path.exists() else ""
    assert after == before


def test_dry_runs_change_nothing(cloud):
    env = cloud[3]
    before = everything(env)
    scenario = str(REPO / "scenarios" / "acl-removed-octavia.yaml")
    for args in (("run", scenario, "--dry-run"), ("campaign", "--profile", "preprod", "--dry-run"),
                 ("load", "--users", "2", "--spawn-rate", "2", "--duration", "10", "--dry-run")):
        proc = cli(cloud, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "dry run: nothing was changed" in proc.stdout and "clean-up" in proc.stdout
    assert everything(env) == before


def test_heal_after_the_cli_is_killed_restores_the_acl_and_deletes_what_was_written(cloud, tmp_path):
    name, targets, environ, env = cloud
    before = everything(env)
    scenario = tmp_path / "acl-long.yaml"
    spec = yaml.safe_load((REPO / "scenarios" / "acl-removed-octavia.yaml").read_text())
    spec["environment"] = str(REPO / "environments" / "simple-crypto.yaml")
    spec["timeline"][0]["heal_at"] = 120  # the CLI dies long before the planned heal
    scenario.write_text(yaml.safe_dump(spec))
    journal = Journal(state_dir(cloud))
    proc = subprocess.Popen([*CLI, "run", str(scenario), "--cloud", name, "--targets", str(targets)], cwd=REPO,
                            env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not any(e["name"] == "acl_removal" and e["state"] == "injected" for e in journal.active()):
            assert time.monotonic() < deadline and proc.poll() is None, "the fault was never injected"
            time.sleep(0.2)
        (active,) = [e for e in journal.active() if e["name"] == "acl_removal"]
        container = active["params"]["ref"]
        service_user = env.session("service").get_user_id()
        acl = env.session().get(container + "/acl", raise_exc=False, timeout=15).json()
        assert service_user not in acl.get("read", {}).get("users", [])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    healed = harness_cli("heal", f"cloud-{name}", env=environ, timeout=300)
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert active["id"] in healed.stdout and "deleted what bh-" in healed.stdout
    assert journal.entries()[active["id"]]["state"] == "healed"
    assert everything(env) == before  # the container (its ACL healed first) is gone with the rest
