"""The Docker provider on a real daemon with real images.

The images are built once per session through harness.images (minutes the first time on
a machine; later sessions find them by their content-hash tags and build nothing).
Without a reachable daemon these tests are skipped, except under CI=true, where they fail:
CI machines are meant to have a daemon.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import requests

from harness import images
from harness.errors import HarnessError
from tests.conftest import CLI, REPO, harness_cli, topology

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("docker")]

NEEDED_IMAGES = ("python", "mariadb")


@pytest.fixture(scope="session")
def built_images(docker_client):
    """Build (or find) the images; the result says how long it took and what was built."""
    return images.build(docker_client, air_gapped=None, names=NEEDED_IMAGES)


def _labelled(client, run_id):
    from harness.providers.docker import labelled

    return labelled(client, run_id)


def _nothing_left(client, run_id) -> None:
    left = _labelled(client, run_id)
    assert left == {"containers": [], "networks": [], "volumes": []}, f"left behind: {left}"


@pytest.fixture(scope="module")
def simple_env(built_images):
    from harness.environment import Environment

    env = Environment.up(topology("simple-crypto"), provider="docker")
    yield env
    env.down()


# -- no daemon: a clear error, everywhere -----------------------------------------------------

def test_no_daemon_is_a_clear_error_naming_docker_host(monkeypatch, tmp_path):
    from harness.environment import Environment

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    monkeypatch.setenv("BARBICAN_HARNESS_REPORTS", str(tmp_path / "reports"))
    with pytest.raises(HarnessError) as err:
        images.docker_client()
    assert "DOCKER_HOST" in str(err.value) and "no-such-docker.sock" in str(err.value)
    with pytest.raises(HarnessError, match="no Docker daemon reachable"):
        Environment.up(topology("simple-crypto"), provider="docker")
    # Nothing was written: the check runs before the run directory exists.
    assert not (tmp_path / "reports" / "runs").exists() or not any((tmp_path / "reports" / "runs").iterdir())


# -- images ------------------------------------------------------------------------------------

def test_images_are_tagged_by_content_and_a_rebuild_with_nothing_changed_does_nothing(docker_client, built_images):
    for name in NEEDED_IMAGES:
        tag = built_images.tags[name]
        assert tag.startswith(f"barbican-harness/{name}:")
        assert docker_client.images.get(tag).labels.get(images.LABEL_IMAGE) == name
    start = time.monotonic()
    again = images.build(docker_client, air_gapped=None, names=NEEDED_IMAGES)
    assert again.built == [] and again.tags == built_images.tags
    assert time.monotonic() - start < 30


def test_only_container_code_goes_into_the_python_image():
    files = {p.relative_to(REPO).as_posix() for p in images.container_modules()}
    assert {"harness/wsgi/barbican_api.py", "harness/wsgi/keystone_api.py", "harness/proxy/__main__.py",
            "harness/shim/__init__.py"} <= files
    assert not any(f.startswith(("harness/providers/", "harness/services/", "harness/faults/")) for f in files)


def test_debian_mirror_comes_from_apt_sources(monkeypatch):
    monkeypatch.delenv("BARBICAN_HARNESS_DEBIAN_MIRROR", raising=False)
    if any(images.SUITE in suites for _, suites in images._sources_entries()):
        mirror = images.debian_mirror()
        assert mirror.startswith(("http://", "https://")) and "security" not in mirror
    else:  # e.g. an Ubuntu host: the error says how to name a mirror
        with pytest.raises(HarnessError, match="BARBICAN_HARNESS_DEBIAN_MIRROR"):
            images.debian_mirror()
    monkeypatch.setenv("BARBICAN_HARNESS_DEBIAN_MIRROR", "http://mirror.example/debian")
    assert images.debian_mirror() == "http://mirror.example/debian"


# -- an environment ------------------------------------------------------------------------------

def test_simple_crypto_cross_node_round_trip(simple_env, docker_client):
    assert [n.name for n in simple_env.nodes] == ["barbican-1", "barbican-2"]
    for node in simple_env.nodes:
        assert node.url.startswith("http://127.0.0.1:")
    ref = simple_env.barbican(node="barbican-1").secrets.create(
        payload="docker-round-trip", payload_content_type="text/plain").store()
    assert simple_env.barbican(node="barbican-2").secrets.get(ref).payload == "docker-round-trip"
    # One container per service, all labelled, on one private network, ports on loopback only.
    names = _labelled(docker_client, simple_env.run_id)
    services = {c.labels["barbican-harness.service"]
                for c in docker_client.containers.list(filters={"label": f"barbican-harness.run={simple_env.run_id}"})}
    assert services == {"mariadb", "keystone", "barbican-1", "barbican-2", "proxy"}
    assert len(names["networks"]) == 1
    for c in docker_client.containers.list(filters={"label": f"barbican-harness.run={simple_env.run_id}"}):
        for bindings in (c.attrs["NetworkSettings"]["Ports"] or {}).values():
            assert all(b["HostIp"] == "127.0.0.1" for b in bindings or [])
    # Logs land in the run directory, as with the local provider.
    assert (simple_env.run_dir / "logs" / "barbican-1.log").stat().st_size > 0


def _store_through(env, node: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return env.barbican(node=node).secrets.create(payload="p", payload_content_type="text/plain").store()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _unreachable(url: str) -> bool:
    try:
        requests.get(url + "/healthcheck", timeout=3)
        return False
    except requests.RequestException:
        return True


@pytest.mark.parametrize("fault", ["node_kill", "partition"])
def test_fault_cuts_one_node_and_heals(simple_env, docker_client, fault):
    from harness.faults.engine import FaultEngine

    engine = FaultEngine(simple_env)
    node2 = simple_env.node("barbican-2")
    with engine.injected(fault, {"node": "2"}):
        assert _unreachable(node2.url), f"{fault}: barbican-2 still answers"
        # The other node keeps serving, and the data is shared.
        ref = _store_through(simple_env, "barbican-1", timeout=10)
        c = docker_client.containers.get(f"bh-{simple_env.run_id}-barbican-2")
        if fault == "node_kill":
            assert c.status == "exited"
        else:
            assert not c.attrs["NetworkSettings"]["Networks"]
    ref2 = _store_through(simple_env, "barbican-2")
    assert simple_env.barbican(node="barbican-2").secrets.get(ref).payload == "p"
    assert simple_env.barbican(node="barbican-1").secrets.get(ref2).payload == "p"
    assert not engine.active()


def test_node_pause_freezes_the_container_and_heals(simple_env, docker_client):
    from harness.faults.engine import FaultEngine

    engine = FaultEngine(simple_env)
    node2 = simple_env.node("barbican-2")
    with engine.injected("node_pause", {"node": "2"}):
        with pytest.raises(requests.ReadTimeout):
            requests.get(node2.url + "/healthcheck", timeout=2)
    assert requests.get(node2.url + "/healthcheck", timeout=10).status_code == 200


def test_kek_mismatch_restarts_the_container_with_changed_config(simple_env):
    from harness.faults.engine import FaultEngine

    ref = _store_through(simple_env, "barbican-1")
    with FaultEngine(simple_env).injected("kek_mismatch", {"node": "2"}):
        with pytest.raises(Exception, match="failure seen"):
            simple_env.barbican(node="barbican-2").secrets.get(ref).payload
    assert simple_env.barbican(node="barbican-2").secrets.get(ref).payload == "p"


def test_down_leaves_nothing_labelled(built_images, docker_client):
    from harness.environment import Environment

    env = Environment.up(topology("quick-sqlite"), provider="docker")
    assert _labelled(docker_client, env.run_id)["containers"]
    env.down()
    _nothing_left(docker_client, env.run_id)
    env.down()  # idempotent


def test_pkcs11_token_volume_and_shim_faults(built_images, docker_client):
    from harness.environment import Environment
    from harness.faults.engine import FaultEngine

    env = Environment.up(topology("pkcs11-softhsm"), provider="docker")
    try:
        vols = _labelled(docker_client, env.run_id)["volumes"]
        assert len(vols) == 1 and vols[0].endswith("softhsm-tokens")
        for node in ("barbican-1", "barbican-2"):
            mounts = docker_client.containers.get(f"bh-{env.run_id}-{node}").attrs["Mounts"]
            assert any(m.get("Name") == vols[0] for m in mounts)
        ref = env.barbican(node="barbican-1").secrets.create(payload="hsm", payload_content_type="text/plain").store()
        assert env.barbican(node="barbican-2").secrets.get(ref).payload == "hsm"
        # The shim in the image counts every container's calls through the mounted control dir.
        control = env.provider.shim.control
        time.sleep(0.5)
        assert control.stats().get("C_Decrypt", {}).get("calls", 0) >= 1
        with FaultEngine(env).injected("hsm_error", {"function": "C_Decrypt", "code": "CKR_DEVICE_ERROR"}):
            with pytest.raises(Exception, match="failure seen"):
                env.barbican(node="barbican-2").secrets.get(ref).payload
        assert env.barbican(node="barbican-2").secrets.get(ref).payload == "hsm"
    finally:
        env.down()
    _nothing_left(docker_client, env.run_id)


def test_sigkill_of_the_cli_during_up_then_down_leaves_nothing_labelled(built_images, docker_client, tmp_path):
    from harness.providers.docker import remove_labelled

    env = {**os.environ, "BARBICAN_HARNESS_REPORTS": str(tmp_path)}
    cli = subprocess.Popen([*CLI, "up", str(topology("simple-crypto")), "--provider", "docker"], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run_id = None
    try:
        try:
            deadline = time.monotonic() + 180
            # Kill it mid-way: once the database and Keystone containers exist.
            while time.monotonic() < deadline:
                states = list((tmp_path / "runs").glob("*/state.json"))
                if states and not run_id:
                    try:
                        run_id = json.loads(states[0].read_text())["run_id"]
                    except (json.JSONDecodeError, KeyError):
                        run_id = None
                if run_id:
                    services = {c["Labels"].get("barbican-harness.service") for c in docker_client.api.containers(
                        all=True, filters={"label": f"barbican-harness.run={run_id}"})}
                    if {"mariadb", "keystone"} <= services:
                        break
                assert cli.poll() is None, "up finished before it could be killed"
                time.sleep(0.1)
            else:
                pytest.fail("the database and Keystone containers never appeared")
        finally:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait(10)
        assert _labelled(docker_client, run_id)["containers"], "the kill left nothing to clean: test is void"
        harness_cli("down", run_id, env=env, check=True, timeout=120)
        _nothing_left(docker_client, run_id)
    finally:
        if run_id:  # whatever happened above, this test leaves nothing behind
            remove_labelled(docker_client, run_id)
