"""Issue 11: declared capabilities. A fault the target cannot take is refused before the
journal has an entry, with a message naming the missing capability: in pure logic (every
fault of the catalog against an API-only target), on an existing cloud (a harness
environment used only through its clouds.yaml), and from the CLI on a local environment
(a partition needs a container network)."""

from __future__ import annotations

import pytest
import yaml

from harness.faults import CATALOG
from harness.faults.engine import FaultEngine, make_fault
from harness.faults.journal import Journal
from harness.providers.facets import environment_capabilities, environment_traits
from harness.target import CAPABILITY_HELP, Capability, MissingCapability, Traits
from harness.topology import load_topology
from tests.conftest import harness_cli, topology
from tests.stubs import StubTarget

# Parameters that make each fault valid (references are never followed by check()).
PARAMS = {"acl_removal": {"ref": "http://x/v1/secrets/1"}, "secret_expiry": {"ref": "http://x/v1/secrets/1"},
          "container_member_deleted": {"container_ref": "http://x/v1/containers/1"},
          "consumer_in_use_delete": {"ref": "http://x/v1/secrets/1"}}
API_ONLY = Traits("cloud 'c'", frozenset({Capability.API}), ("simple_crypto", "pkcs11", "kmip", "vault"), True,
                  ("cloud",), ("keystone", "db", "kmip", "queue", "vault"))


def test_every_capability_says_what_it_means():
    assert set(CAPABILITY_HELP) == set(Capability)


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_an_api_only_target_refuses_every_fault_that_needs_more_naming_it(name):
    fault = make_fault(name, PARAMS.get(name, {}))
    needed = set(fault.capabilities) - {Capability.API}
    if not needed:
        fault.check(API_ONLY)  # API-state faults run anywhere
        return
    with pytest.raises(MissingCapability) as exc:
        fault.check(API_ONLY)
    for cap in needed:
        assert f"'{cap.value}'" in str(exc.value)
    assert "has: api" in str(exc.value)


def test_the_topology_decides_the_capabilities_of_an_environment():
    local = environment_capabilities(load_topology(topology("simple-crypto")), "local")
    docker = environment_capabilities(load_topology(topology("pkcs11-softhsm")), "docker")
    sqlite = environment_capabilities(load_topology(topology("quick-sqlite")), "local")
    assert Capability.CONTAINER_NETWORK not in local and Capability.CONTAINER_NETWORK in docker
    assert Capability.HSM_SHIM not in local and {Capability.HSM_SHIM, Capability.HSM_TOKEN} <= docker
    assert Capability.DATABASE in local and Capability.DATABASE not in sqlite
    traits = environment_traits(load_topology(topology("simple-crypto")), "local")
    assert traits.nodes == ("barbican-1", "barbican-2") and traits.links == ("keystone", "db")


def test_the_engine_refuses_before_the_journal_has_an_entry(tmp_path):
    engine = FaultEngine(StubTarget(tmp_path, {Capability.API, Capability.CONFIG_WRITE}, backends=["pkcs11"]))
    with pytest.raises(MissingCapability, match="'hsm_shim'"):
        engine.inject("hsm_latency", {"ms": 10})
    with pytest.raises(MissingCapability, match="'node_control'"):
        engine.inject("node_kill", {"node": "1"})
    assert not Journal(tmp_path).path.exists()


@pytest.mark.integration
@pytest.mark.xdist_group("simple-crypto")
def test_an_existing_cloud_refuses_a_destructive_fault_before_journaling(env_of, tmp_path, monkeypatch):
    from harness.targets import CloudTarget

    env = env_of("simple-crypto")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", env.state["clouds_yaml"])
    targets = tmp_path / "targets.yaml"
    targets.write_text(yaml.safe_dump({"clouds": {"creator": f"{env.run_id}-creator"}}))
    cloud = CloudTarget.load(f"{env.run_id}-creator", targets)
    assert cloud.capabilities == {Capability.API}
    journal = Journal(cloud.run_dir)
    before = journal.path.read_text() if journal.path.exists() else ""
    for name, params, needed in (("node_kill", {}, "node_control"), ("kek_mismatch", {}, "config_write"),
                                 ("db_outage", {}, "network_links")):
        with pytest.raises(MissingCapability, match=f"'{needed}'"):
            FaultEngine(cloud).inject(name, params)
    after = journal.path.read_text() if journal.path.exists() else ""
    assert after == before


@pytest.mark.integration
@pytest.mark.xdist_group("simple-crypto")
def test_the_cli_refuses_a_partition_on_local_processes_in_one_line(env_of):
    env = env_of("simple-crypto")
    journal = Journal(env.run_dir)
    before = journal.path.read_text() if journal.path.exists() else ""
    proc = harness_cli("fault", "inject", "partition", "--node", "2", "--run", env.run_id, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())
    assert "needs capability 'container_network'" in message and "local provider" in message
    after = journal.path.read_text() if journal.path.exists() else ""
    assert after == before
