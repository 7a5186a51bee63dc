"""Issue 13: a Kolla-shaped deployment the harness did NOT start (tests/kolla_deployment.py:
plain Docker SDK calls), driven only through the CLI with a deployment file, as an
operator would: the preprod campaign with load and thresholds, a KEK mismatch on one
container (triage verdict, nothing lost), `heal` after the CLI was SIGKILLed in that
fault (the config's hash restored, the container restarted), node kill and partition
through `fault inject/heal`, and refusals before anything is journaled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from harness.faults.journal import Journal
from tests.conftest import CLI, REPO, harness_cli, project_resources
from tests.kolla_deployment import BARBICAN_CONF, ROLES, KollaDeployment

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("kolla"), pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def kolla(tmp_path_factory, docker_client):
    started = time.monotonic()
    with KollaDeployment(tmp_path_factory.mktemp("kolla")) as deployment:
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(deployment.clouds_yaml)  # for the checks made here
        yield deployment
        os.environ.pop("OS_CLIENT_CONFIG_FILE", None)
        sys.stderr.write(f"\nkolla deployment: up in {deployment.bring_up_s:.0f} s, "
                         f"up for {time.monotonic() - started:.0f} s in all\n")


@pytest.fixture(scope="module")
def target(kolla):
    """The deployment through the harness's own API: only to check what the CLI did."""
    from harness.deployment import DeploymentTarget

    return DeploymentTarget.load(kolla.deployment_file)


def cli(kolla, *args, timeout=600):
    return harness_cli(*args, "--deployment", str(kolla.deployment_file), env=kolla.environ(), timeout=timeout)


def everything(target) -> set[str]:
    return project_resources(target, ROLES)


def config_sha(kolla, service: str) -> str:
    rc, out = kolla.containers[service].exec_run(["sha256sum", BARBICAN_CONF])
    assert rc == 0, out
    return out.split()[0].decode()


def started_at(kolla, service: str) -> str:
    c = kolla.containers[service]
    c.reload()
    return c.attrs["State"]["StartedAt"]


def serves(url: str) -> bool:
    import requests

    try:
        return requests.get(url + "/", timeout=5).status_code == 300
    except requests.RequestException:
        return False


def variant(kolla, name: str, tmp_path, edit):
    """Another deployment file (its own state directory), changed by `edit(spec)`."""
    spec = kolla.deployment_spec()
    spec["name"] = f"{spec['name']}-{name}"
    spec["api"]["targets"] = str(kolla.targets_file)
    edit(spec)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    path.chmod(0o600)
    return spec, path


def with_node_2_in(kolla, container: str, name: str, tmp_path):
    return variant(kolla, name, tmp_path, lambda spec: spec["nodes"]["barbican-2"].update(container=container))


def test_destructive_faults_are_refused_before_anything_is_journaled(kolla, target):
    journal = Journal(target.run_dir)
    before = journal.path.read_text() if journal.path.exists() else ""
    proc = cli(kolla, "fault", "inject", "kek_mismatch", "--node", "2")
    assert proc.returncode == 2 and "pass --allow-destructive" in " ".join(proc.stderr.split()), proc.stderr
    # Two nodes at once needs --max-nodes 2, even with --allow-destructive.
    proc = cli(kolla, "fault", "inject", "kek_rotation_without_rewrap", "--allow-destructive")
    assert proc.returncode == 2 and "--max-nodes is 1" in " ".join(proc.stderr.split()), proc.stderr
    for args in (("fault", "inject", "kek_mismatch", "--node", "2", "--allow-destructive", "--dry-run"),
                 ("run", str(REPO / "scenarios" / "kek-mismatch-one-node.yaml"), "--allow-destructive", "--dry-run"),
                 ("campaign", "--profile", "preprod", "--dry-run")):
        proc = cli(kolla, *args)
        assert proc.returncode == 0 and "dry run: nothing was changed" in proc.stdout, proc.stdout + proc.stderr
    after = journal.path.read_text() if journal.path.exists() else ""
    assert after == before and "Traceback" not in proc.stderr


def test_a_bad_deployment_file_is_one_clear_line_per_field(kolla, tmp_path):
    spec = kolla.deployment_spec()
    spec["nodes"]["barbican-2"]["docker_host"] = "http://docker.example"
    spec["nodes"]["barbican-1"]["log"] = "barbican.log"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    proc = harness_cli("fault", "inject", "node_kill", "--deployment", str(bad), env=kolla.environ())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = " ".join(proc.stderr.split())
    assert str(bad) in err
    assert "'nodes.barbican-2.docker_host'" in err and "unix://..., tcp://..., ssh://..." in err
    assert "'nodes.barbican-1.log'" in err and "'stdout'" in err


def test_node_kill_and_partition_through_fault_inject_and_heal(kolla, target):
    url = kolla.node_url(1)
    for fault in ("node_kill", "partition"):
        proc = cli(kolla, "fault", "inject", fault, "--node", "1", "--allow-destructive")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        fault_id = proc.stdout.split("injected ")[1].split()[0]
        assert not serves(url), f"{fault}: barbican-1 still answers"
        proc = cli(kolla, "fault", "heal", fault_id)
        assert proc.returncode == 0 and fault_id in proc.stdout, proc.stdout + proc.stderr
        assert serves(url), f"{fault}: barbican-1 does not serve after the heal"
    assert json.loads((target.run_dir / "changes.json").read_text()) == {}


def test_partition_on_host_networking_is_refused_with_the_reason(kolla, tmp_path):
    host_net = kolla.client.containers.run(kolla.python, ["sleep", "600"], name=kolla.name("barbican_api_host"),
                                           network_mode="host", labels=kolla.labels, detach=True)
    try:
        spec, path = with_node_2_in(kolla, host_net.name, "hostnet", tmp_path)
        proc = harness_cli("fault", "inject", "partition", "--node", "2", "--allow-destructive",
                           "--deployment", str(path), env=kolla.environ())
        err = " ".join(proc.stderr.split())
        assert proc.returncode == 2 and "needs capability 'container_network'" in err, proc.stderr
        assert f"{host_net.name}: host networking" in err
        from harness.environment import runs_dir

        assert not (runs_dir() / f"deployment-{spec['name']}" / "faults.jsonl").exists()
    finally:
        host_net.remove(force=True)


def test_a_database_url_grants_sql_access_and_its_absence_says_why(kolla, target, tmp_path):
    from harness.deployment import DeploymentTarget
    from harness.target import Capability

    assert Capability.DATABASE not in target.capabilities and "database.url" in target.why_not[Capability.DATABASE]
    url = f"mysql+pymysql://barbican:{kolla.pw['db_barbican']}@127.0.0.1:{kolla.ports['mariadb']}/barbican"
    _, path = variant(kolla, "db", tmp_path, lambda spec: spec["database"].update(url=url))
    with_db = DeploymentTarget.load(path)
    assert Capability.DATABASE in with_db.capabilities
    with with_db.facet(Capability.DATABASE).connect("barbican") as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM secrets")
        assert cur.fetchone()[0] >= 0


def test_a_prepared_fault_that_never_got_to_the_container_restarts_nothing(kolla, target):
    """A crash between the journal's `prepared` and the inject: heal finds the config as it
    was and the container running since before; it writes nothing, restarts nothing and
    forgets the saved copy."""
    from harness.faults.engine import FaultEngine
    from harness.target import Capability

    engine = FaultEngine(target)
    fault_id = engine.journal.begin("kek_mismatch", {"node": "2"})
    kept = target.facet(Capability.CONFIG_WRITE).keep("barbican-2")
    engine.journal.mark(fault_id, "prepared", undo={"node": "barbican-2", "kept_configs": {"barbican-2": kept}})
    sha, start = config_sha(kolla, "barbican_api_2"), started_at(kolla, "barbican_api_2")
    proc = harness_cli("heal", target.run_id, env=kolla.environ())
    assert proc.returncode == 0 and fault_id in proc.stdout, proc.stdout + proc.stderr
    assert (config_sha(kolla, "barbican_api_2"), started_at(kolla, "barbican_api_2")) == (sha, start)
    assert not os.path.exists(kept["saved"]) and json.loads((target.run_dir / "changes.json").read_text()) == {}


def test_a_prepared_fault_touches_nothing_on_a_recreated_container(kolla, tmp_path):
    """A journal entry whose container was redeployed since: heal neither writes the saved
    config into the new container nor restarts it, and says so."""
    from harness.deployment import DeploymentTarget
    from harness.faults.engine import FaultEngine
    from harness.target import Capability

    victim = kolla.client.containers.run(kolla.python, ["sleep", "600"], name=kolla.name("barbican_api_old"),
                                         labels=kolla.labels, detach=True)
    victim.exec_run(["sh", "-c", f"mkdir -p /etc/barbican && echo '[DEFAULT]' > {BARBICAN_CONF}"])
    _, path = with_node_2_in(kolla, victim.name, "redeployed", tmp_path)
    target = DeploymentTarget.load(path)
    # What a crash right after the fault's prepare leaves: the journal entry and the saved original.
    engine = FaultEngine(target)
    fault_id = engine.journal.begin("kek_mismatch", {"node": "2"})
    undo = {"node": "barbican-2", "kept_configs": {"barbican-2": target.facet(Capability.CONFIG_WRITE).keep("barbican-2")}}
    engine.journal.mark(fault_id, "prepared", undo=undo)
    victim.remove(force=True)
    reborn = kolla.client.containers.run(kolla.python, ["sleep", "600"], name=victim.name, labels=kolla.labels,
                                         detach=True)
    try:
        reborn.exec_run(["sh", "-c", f"mkdir -p /etc/barbican && echo '# redeployed' > {BARBICAN_CONF}"])
        reborn.reload()
        first_start = reborn.attrs["State"]["StartedAt"]
        proc = harness_cli("heal", target.run_id, env=kolla.environ())
        assert proc.returncode == 0 and fault_id in proc.stdout, proc.stdout + proc.stderr
        assert "was recreated since the harness changed it" in proc.stderr
        rc, out = reborn.exec_run(["cat", BARBICAN_CONF])
        assert out.decode().strip() == "# redeployed"
        reborn.reload()
        assert reborn.attrs["State"]["StartedAt"] == first_start and reborn.status == "running"
    finally:
        reborn.remove(force=True)


def test_preprod_campaign_with_load_and_thresholds(kolla, target):
    before = everything(target)
    proc = cli(kolla, "campaign", "--profile", "preprod", timeout=2000)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = " ".join(proc.stdout.split())
    assert "round trips 4 byte-identical" in out
    run_dir = out.split("results: ")[1].split()[0].rsplit("/", 1)[0]
    campaign = json.loads(open(f"{run_dir}/campaign.json").read())
    assert campaign["passed"], campaign["failures"]
    assert "acl-removed-octavia" in [i["incident"] for i in campaign["incidents"]]
    load = campaign["load"]["summary"]
    assert load["ok"] and load["verdicts"], load  # the thresholds were judged, and held
    assert everything(target) == before


def test_kek_mismatch_on_one_container(kolla, target):
    before, original = everything(target), config_sha(kolla, "barbican_api_2")
    proc = cli(kolla, "run", str(REPO / "scenarios" / "kek-mismatch-one-node.yaml"), "--allow-destructive", "--json",
               timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (result,) = json.loads(proc.stdout)
    assert result["passed"], result["failures"]
    verdict = result["verdict"]
    assert (verdict["category"], verdict["blast_radius"], verdict["affected_nodes"]) == \
        ("kek_mismatch_or_key_loss", "existing_secrets_at_risk", ["barbican-2"])
    # The evidence comes from barbican_api_2's log file inside the container.
    assert any(e.startswith("log barbican-2:") and "InvalidToken" in e for e in verdict["evidence"]), verdict
    assert result["ledger"]["ok"] and result["ledger"]["lost"] == []
    assert config_sha(kolla, "barbican_api_2") == original
    assert not list((target.run_dir / "config-originals").glob("*"))
    assert everything(target) == before


def test_heal_after_the_cli_is_killed_restores_the_config_hash(kolla, target, tmp_path):
    before, original = everything(target), config_sha(kolla, "barbican_api_2")
    scenario = tmp_path / "kek-long.yaml"
    spec = yaml.safe_load((REPO / "scenarios" / "kek-mismatch-one-node.yaml").read_text())
    spec["environment"] = str(REPO / "environments" / "simple-crypto.yaml")
    spec["timeline"][0]["heal_at"] = 600  # the CLI dies long before the planned heal
    scenario.write_text(yaml.safe_dump(spec))
    journal = Journal(target.run_dir)
    output = tmp_path / "run.out"
    with open(output, "wb") as sink:
        proc = subprocess.Popen([*CLI, "run", str(scenario), "--deployment", str(kolla.deployment_file),
                                 "--allow-destructive"], cwd=REPO, env=kolla.environ(), stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not any(e["name"] == "kek_mismatch" and e["state"] == "injected" for e in journal.active()):
            assert proc.poll() is None, f"the run ended before the fault was injected:\n{output.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the fault was never injected"
            time.sleep(0.5)
        (active,) = [e for e in journal.active() if e["name"] == "kek_mismatch"]
        kept = active["undo"]["kept_configs"]["barbican-2"]
        assert kept["sha256"] == original and os.stat(kept["saved"]).st_mode & 0o777 == 0o600
        assert config_sha(kolla, "barbican_api_2") != original  # the fault is in the container's file
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = started_at(kolla, "barbican_api_2")
    healed = harness_cli("heal", target.run_id, env=kolla.environ(), timeout=600)
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert active["id"] in healed.stdout and "deleted what bh-" in healed.stdout
    assert journal.entries()[active["id"]]["state"] == "healed"
    assert config_sha(kolla, "barbican_api_2") == original
    assert started_at(kolla, "barbican_api_2") > killed_at  # restarted with the original
    assert serves(kolla.node_url(2))
    assert not os.path.exists(kept["saved"])
    assert everything(target) == before


@pytest.fixture(scope="module")
def kolla_p11(kolla):
    """The PKCS#11 Barbican container and its deployment file (made on first use)."""
    started = time.monotonic()
    path = kolla.add_p11()
    sys.stderr.write(f"\nkolla p11 container: up in {time.monotonic() - started:.0f} s\n")
    return path


def test_hsm_faults_after_shim_install_and_uninstall_byte_identical(kolla, kolla_p11):
    from harness.deployment import DeploymentTarget
    from harness.deployment.shim import LIBRARY
    from harness.target import Capability

    def p11(*args, timeout=600):
        return harness_cli(*args, "--deployment", str(kolla_p11), env=kolla.environ(), timeout=timeout)

    container = kolla.containers["barbican_api_p11"]
    original = container.exec_run(["sha256sum", BARBICAN_CONF]).output.split()[0].decode()
    # Before the install, HSM faults are refused with what to do, and nothing is journaled.
    proc = p11("fault", "inject", "hsm_error", "--param", "function=C_Encrypt", "--allow-destructive")
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "needs capability 'hsm_shim'" in err and "shim install --deployment" in err, err
    proc = p11("shim", "install", "--dry-run")
    assert proc.returncode == 0 and "nothing was changed" in proc.stdout and LIBRARY in proc.stdout
    assert container.exec_run(["sha256sum", BARBICAN_CONF]).output.split()[0].decode() == original
    proc = p11("shim", "install")
    assert proc.returncode == 0 and "shim installed" in proc.stdout, proc.stdout + proc.stderr
    rc, conf = container.exec_run(["grep", "^library_path", BARBICAN_CONF])
    assert conf.decode().split("=")[1].strip() == LIBRARY
    # An HSM latency scenario through the shim, driven by the CLI.
    proc = p11("run", str(REPO / "scenarios" / "hsm-latency-500ms.yaml"), "--allow-destructive", "--json",
               timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (result,) = json.loads(proc.stdout)
    assert result["passed"], result["failures"]
    stats = DeploymentTarget.load(kolla_p11).facet(Capability.HSM_SHIM).stats()
    assert stats["C_Encrypt"]["calls"] > 0 and stats["C_Decrypt"]["calls"] > 0, stats  # read from the container
    proc = p11("shim", "uninstall")
    assert proc.returncode == 0 and "byte-identical" in proc.stdout, proc.stdout + proc.stderr
    assert container.exec_run(["sha256sum", BARBICAN_CONF]).output.split()[0].decode() == original
    assert container.exec_run(["test", "-e", "/var/lib/barbican-harness"]).exit_code != 0
    assert serves(json_url := yaml.safe_load(kolla_p11.read_text())["nodes"]["barbican-1"]["url"]), json_url
