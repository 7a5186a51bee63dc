"""Triage of incidents the harness did not cause: each one is applied by hand, outside the
fault engine (signals to the run's processes, file edits, a raw API call, the token's files),
on the shared environments, and restored in `finally`. Each verdict must come within 10 s
(its own recorded duration); the time to verdict is printed and recorded as a property.

Restarts are as an operator without the harness would do them: SIGKILL to the uWSGI workers
of a node, which the uWSGI master respawns, loading the app (and barbican.conf) anew
(lazy-apps). SIGHUP is no use: the master re-executes itself with the system python,
outside the venv that has pyuwsgi."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import signal
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests

from harness.target import Capability
from harness.triage.diagnose import Diagnoser, Verdict
from harness.wait import wait_until

pytestmark = pytest.mark.integration

WITHIN_S = 10.0  # the bound on a verdict (its goal: 5 s)
WINDOW_S = 300.0  # what `diagnose --since` defaults to: the healed incidents stay inside it


def _diagnose(env) -> Verdict:
    """A one-off diagnosis as `barbican-harness diagnose --run` makes it: nothing seeded
    known, the log window of `--since`."""
    return Diagnoser(env, logs_dir=env.run_dir / "logs", since=WINDOW_S).diagnose()


def _timed(v: Verdict, what: str, record_property) -> None:
    print(f"time to verdict, {what}: {v.seconds} s -> {v.category}")
    record_property(f"time_to_verdict_s[{what}]", v.seconds)
    assert v.seconds < WITHIN_S, f"{what}: verdict after {v.seconds} s"


def _processes(env, name: str) -> list[psutil.Process]:
    """The recorded process of a service and its children (uWSGI's workers)."""
    pid = next(p["pid"] for p in env.processes() if p["name"] == name and p["running"])
    main = psutil.Process(pid)
    return [main, *main.children(recursive=True)]


def _signal(procs: list[psutil.Process], sig: int) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _respawn_workers(env, node: str) -> None:
    master = _processes(env, node)[0]
    old = {p.pid for p in master.children()}
    _signal(master.children(), signal.SIGKILL)
    url = env.node(node).url

    def serving() -> bool:
        fresh = {p.pid for p in master.children()} - old
        return bool(fresh) and requests.get(url + "/", timeout=3).status_code in (200, 300)

    wait_until(serving, timeout=60, what=f"{node}: uWSGI workers respawned")


def _wait_healthy(env) -> None:
    wait_until(lambda: _diagnose(env).category == "healthy", timeout=90, interval=1,
               what="the environment healthy again after the incident")


@pytest.mark.xdist_group("simple-crypto")
@pytest.mark.parametrize("frozen, category, root, also", [
    ("mariadb", "backend_outage", "database", ["keystone"]),
    ("keystone", "auth_outage", "keystone", []),
])
def test_frozen_shared_dependency_is_named_as_the_cause(env_of, record_property, frozen, category, root, also):
    env = env_of("simple-crypto")
    procs = _processes(env, frozen)
    _signal(procs, signal.SIGSTOP)
    try:
        v = _diagnose(env)
    finally:
        _signal(procs, signal.SIGCONT)
    _timed(v, f"{frozen} frozen", record_property)
    assert (v.category, v.incident, v.blast_radius) == (category, "outage", "new_operations_only"), v.evidence
    assert (v.root_cause, v.affected_services) == (root, also), v.evidence
    assert v.affected_nodes == [n.name for n in env.nodes]
    assert v.evidence[0].startswith(f"probe {root}: no answer"), v.evidence
    assert not any("NodeHung" in e or "timed out" in e and "barbican-" in e for e in v.evidence), v.evidence
    _wait_healthy(env)


@pytest.mark.xdist_group("simple-crypto")
def test_expired_consumed_secret_nobody_seeded_is_found(env_of, record_property):
    env = env_of("simple-crypto")
    role = "other-creator"  # another project than the diagnosis's writer: found all the same
    sess, url = env.session(role), env.nodes[0].url
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=4)
    r = sess.post(url + "/v1/secrets", timeout=15, json={
        "name": "volume-key", "payload": secrets.token_hex(16), "payload_content_type": "text/plain",
        "expiration": expires.strftime("%Y-%m-%dT%H:%M:%S")})
    assert r.status_code == 201, r.text
    ref = r.json()["secret_ref"]
    sid = ref.rstrip("/").rsplit("/", 1)[1]
    consumer = {"service": "volume", "resource_type": "volume", "resource_id": str(uuid.uuid4())}
    version = {"OpenStack-API-Version": "key-manager 1.1"}
    try:
        c = sess.post(f"{url}/v1/secrets/{sid}/consumers", json=consumer, headers=version, timeout=15)
        assert c.status_code == 200, c.text
        time.sleep(max(0.0, (expires - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 1.5)
        assert sess.get(f"{url}/v1/secrets/{sid}", raise_exc=False, timeout=15).status_code == 404
        v = _diagnose(env)
    finally:
        # An expired secret cannot be deleted through the API: its expiration goes back first.
        with env.facet(Capability.DATABASE).connect("barbican") as conn, conn.cursor() as cur:
            cur.execute("UPDATE secrets SET expiration = NULL WHERE id = %s", (sid,))
            conn.commit()
        sess.delete(f"{url}/v1/secrets/{sid}/consumers", json=consumer, headers=version, raise_exc=False, timeout=15)
        assert sess.delete(f"{url}/v1/secrets/{sid}", raise_exc=False, timeout=15).status_code == 204
    _timed(v, "expired unseeded consumed secret", record_property)
    assert (v.category, v.incident, v.blast_radius) == ("expiration", "outage", "existing_secrets_at_risk"), v.evidence
    assert v.affected_nodes == [n.name for n in env.nodes]
    assert sid in v.probes["expiry_audit"]["unseeded"] and any(sid in e for e in v.evidence), v.evidence


def _token_dir(env) -> Path:
    dirs = [p for p in env.facet(Capability.HSM_TOKEN).softhsm.tokens_dir.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def _fail_requests(env) -> None:
    """An operator's clients keep calling while the HSM is gone (what makes Barbican log)."""
    for node in env.nodes:
        env.session().post(node.url + "/v1/secrets", raise_exc=False, timeout=15,
                           json={"name": "during-incident", "payload": secrets.token_hex(8),
                                 "payload_content_type": "text/plain"})


@pytest.mark.xdist_group("pkcs11-softhsm")
def test_healed_hsm_incident_then_healthy(env_of, record_property, tmp_path):
    env = env_of("pkcs11-softhsm")
    token = _token_dir(env)
    away = tmp_path / "token-away"
    token.rename(away)  # the token is gone (a removed HSM, a lost volume)
    try:
        _fail_requests(env)
        during = _diagnose(env)
        assert during.category != "healthy", during.evidence
    finally:
        if away.exists():
            away.rename(token)
        # Barbican does not recover on its own ("Token Labels not found" until restarted).
        for node in env.nodes:
            _respawn_workers(env, node.name)
    # The first crypto operations of a fresh worker (plugin set-up, HSM login) can take over
    # a second on a loaded machine: the same round trip per node as after `up`, first.
    env.verify_ready()
    logs = "".join((env.run_dir / "logs" / f"{n.name}-app.log").read_text() for n in env.nodes)
    assert "Reinitializing PKCS#11 library" in logs or "Token Labels not found" in logs  # inside the window
    v = _diagnose(env)
    _timed(v, "after a healed HSM incident", record_property)
    assert (v.category, v.incident, v.blast_radius, v.affected_nodes) == ("healthy", "none", "none", []), v.evidence


@pytest.mark.xdist_group("pkcs11-softhsm")
def test_healed_mkek_incident_then_wrong_pin_on_one_node_is_an_outage(env_of, record_property, tmp_path):
    env = env_of("pkcs11-softhsm")
    hsm = env.facet(Capability.HSM_TOKEN)
    token = _token_dir(env)
    saved = tmp_path / "token"
    shutil.copytree(token, saved)
    conf = Path(env.run_dir) / "barbican" / "barbican-2" / ".barbican" / "barbican.conf"
    original_conf, conf_mode = conf.read_bytes(), conf.stat().st_mode & 0o777
    token_restored = False
    try:
        # 1. The MKEK deleted from the token (as with pkcs11-tool), seen after a restart.
        hsm.delete_key(hsm.mkek_label)
        for node in env.nodes:
            _respawn_workers(env, node.name)
        first = _diagnose(env)
        assert first.category == "kek_mismatch_or_key_loss", first.evidence
        # 2. Healed: the token's files back, every node restarted.
        shutil.rmtree(token)
        shutil.copytree(saved, token)
        token_restored = True
        for node in env.nodes:
            _respawn_workers(env, node.name)
        _wait_healthy(env)
        # 3. A wrong PIN in one node's barbican.conf, that node restarted.
        text = conf.read_text()
        assert "\nlogin = " in text
        conf.write_text("".join("login = wrong-pin-0000\n" if line.startswith("login = ") else line
                                for line in text.splitlines(keepends=True)))
        _respawn_workers(env, "barbican-2")
        v = _diagnose(env)
    finally:
        conf.write_bytes(original_conf)
        os.chmod(conf, conf_mode)
        if not token_restored:
            shutil.rmtree(token, ignore_errors=True)
            shutil.copytree(saved, token)
        for node in env.nodes:
            _respawn_workers(env, node.name)
    _timed(v, "wrong PIN on one node after a healed MKEK incident", record_property)
    assert (v.category, v.incident, v.blast_radius) == ("hsm_unreachable", "outage", "new_operations_only"), \
        v.evidence
    assert v.affected_nodes == ["barbican-2"], v.evidence
    assert any("CKR_PIN_INCORRECT" in e for e in v.evidence), v.evidence
    _wait_healthy(env)
