"""Topology files: validation names the file, the field and what is allowed (pure logic)."""

import pytest

from harness.errors import TopologyError
from harness.topology import load_topology
from tests.conftest import ENVIRONMENTS


@pytest.mark.parametrize("path", sorted(ENVIRONMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_topologies_are_valid(path):
    topo = load_topology(path)
    assert topo.name == path.stem
    assert topo.stores


def write(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


def test_misspelt_field_names_file_field_and_allowed_values(tmp_path):
    p = write(tmp_path, "name: x\nstores: [{name: s, backend: simple_crypto}]\nbarbican:\n  nodez: 2\n")
    with pytest.raises(TopologyError) as err:
        load_topology(p)
    msg = str(err.value)
    assert str(p) in msg
    assert "barbican.nodez" in msg
    assert "did you mean 'nodes'" in msg
    assert "allowed: nodes, processes, source, threads" in msg


def test_misspelt_top_level_field(tmp_path):
    p = write(tmp_path, "name: x\nstores: [{name: s, backend: simple_crypto}]\npolicey: legacy\n")
    msg = str(pytest.raises(TopologyError, load_topology, p).value)
    assert "'policey'" in msg and "did you mean 'policy'" in msg and "stores" in msg


def test_wrong_value_lists_allowed_values(tmp_path):
    p = write(tmp_path, "name: x\nstores: [{name: s, backend: dogtag}]\n")
    msg = str(pytest.raises(TopologyError, load_topology, p).value)
    assert "stores.0.backend" in msg
    assert "'simple_crypto', 'pkcs11', 'kmip' or 'vault'" in msg


def test_token_cache_out_of_range_names_the_field_and_the_bound(tmp_path):
    p = write(tmp_path, "name: x\nstores: [{name: s, backend: simple_crypto}]\nbarbican:\n  token_cache_s: 0\n")
    msg = str(pytest.raises(TopologyError, load_topology, p).value)
    assert str(p) in msg and "barbican.token_cache_s" in msg and "greater than or equal to 1" in msg


def test_sqlite_refuses_concurrency(tmp_path):
    p = write(tmp_path, "name: x\ndatabase: sqlite\nstores: [{name: s, backend: simple_crypto}]\n")
    msg = str(pytest.raises(TopologyError, load_topology, p).value)
    assert "sqlite" in msg and "mariadb" in msg


def test_several_stores_need_one_default(tmp_path):
    p = write(tmp_path, "name: x\nstores: [{name: a, backend: simple_crypto}, {name: b, backend: pkcs11}]\n")
    msg = str(pytest.raises(TopologyError, load_topology, p).value)
    assert "global_default" in msg


def test_pkcs11_store_gets_default_hsm(tmp_path):
    p = write(tmp_path, "name: x\nstores: [{name: h, backend: pkcs11}]\n")
    topo = load_topology(p)
    assert topo.hsm is not None and topo.hsm.token_label == "barbican"


def test_missing_and_non_yaml_files(tmp_path):
    assert "file not found" in str(pytest.raises(TopologyError, load_topology, tmp_path / "nope.yaml").value)
    p = write(tmp_path, "name: [unclosed\n")
    assert "not valid YAML" in str(pytest.raises(TopologyError, load_topology, p).value)


def test_environment_up_takes_a_topology_object_and_resolves_its_sources_from_the_working_directory(tmp_path,
                                                                                                     monkeypatch):
    """Environment.up accepts a Topology built in code; its relative barbican.source paths
    start in the working directory, and a missing one is refused before anything starts."""
    from harness.environment import Environment
    from harness.errors import HarnessError

    topo = load_topology(ENVIRONMENTS / "simple-crypto.yaml")
    topo = topo.model_copy(update={"barbican": topo.barbican.model_copy(update={"source": "wheel:missing.whl"})})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HarnessError) as err:
        Environment.up(topo)
    assert "topology: barbican.source" in str(err.value)
    assert str(tmp_path / "missing.whl") in str(err.value)
