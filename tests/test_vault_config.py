"""Issue 16, pure logic: the vault part of a topology, Barbican's policy, what a vault
environment can do, and that every vault fault has its scenario."""

from __future__ import annotations

import pytest
import yaml

from harness.errors import TopologyError
from harness.faults import CATALOG
from harness.providers.facets import environment_traits
from harness.services.vault import barbican_policy
from harness.target import Capability
from harness.topology import load_topology
from tests.conftest import REPO, topology
from tests.test_topology import write


def test_a_vault_store_gets_the_default_openbao_settings():
    topo = load_topology(topology("vault"))
    assert topo.backends == ["vault"]
    assert (topo.vault.mount, topo.vault.kv_version, topo.vault.token_ttl) == ("barbican", 2, 3600)
    multi = load_topology(topology("vault-multi-store"))
    assert multi.backends == ["simple_crypto", "vault"] and multi.vault is not None


def test_vault_settings_without_a_vault_store_are_refused(tmp_path):
    p = write(tmp_path, "name: x\nstores: [{name: s, backend: simple_crypto}]\nvault: {kv_version: 1}\n")
    msg = str(pytest.raises(TopologyError, load_topology, p).value)
    assert "vault: only with a store of backend vault" in msg


def test_kv_version_names_the_allowed_values(tmp_path):
    p = write(tmp_path, "name: x\nstores: [{name: v, backend: vault}]\nvault: {kv_version: 3}\n")
    msg = str(pytest.raises(TopologyError, load_topology, p).value)
    assert "field 'vault.kv_version'" in msg and "1 or 2" in msg


@pytest.mark.parametrize("version, paths", [(2, ['path "barbican/data/*"']), (1, ['path "barbican/*"'])])
def test_barbicans_policy_grants_its_mount_and_nothing_else(version, paths):
    text = barbican_policy("barbican", version)
    assert [line for line in text.splitlines() if line.startswith("path")] == [p + " {" for p in paths]
    assert "list" not in text and "sudo" not in text


def test_a_vault_environment_has_the_vault_facet_and_link_on_both_providers():
    for provider in ("local", "docker"):
        traits = environment_traits(load_topology(topology("vault")), provider)
        assert Capability.VAULT in traits.capabilities and "vault" in traits.links
    assert Capability.VAULT not in environment_traits(load_topology(topology("simple-crypto")), "local").capabilities


def test_every_vault_fault_has_a_scenario_on_the_vault_topology():
    used = set()
    for path in sorted((REPO / "scenarios").glob("vault-*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert data["environment"] == "../environments/vault.yaml", path
        used |= {event["fault"] for event in data["timeline"]}
    assert used == {name for name in CATALOG if name.startswith("vault_")}
