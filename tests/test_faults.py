"""Issue 3: every fault of the catalog on real services: the signature Barbican shows
(status, body text, log line or CKR_ code) while injected, and the steady state after heal.

Tests of one topology share one environment per xdist worker and run in order there;
each heals what it injects, so the next starts from a healthy environment."""

from __future__ import annotations

import contextlib
import os
import time

import pytest

from harness.faults.engine import FaultEngine
from harness.known_bugs import known_bug
from tests.faults_support import log_of, payload_status, purge_project, raw, seed, steady_state

pytestmark = pytest.mark.integration

FAILURE_STORE = "Secret creation failure seen - please contact site administrator."
FAILURE_GET = "Secret payload retrieval failure seen - please contact site administrator."


def store(env, node: str, role: str | None = None):
    return raw(env, "POST", env.node(node).url + "/v1/secrets", role,
               json={"payload": "probe", "payload_content_type": "text/plain"})


def grew(env, service: str, before: str, needle: str) -> bool:
    return needle in log_of(env, service)[len(before):]


# -- simple_crypto ------------------------------------------------------------------------
@pytest.mark.xdist_group("simple-crypto")
def test_kek_mismatch_on_one_node(env_of):
    env = env_of("simple-crypto")
    seeded = seed(env)
    engine = FaultEngine(env)
    before = log_of(env, "barbican-2")
    with engine.injected("kek_mismatch", {"node": "2"}):
        ref = seeded[0].ref
        good, bad = payload_status(env, ref, "barbican-1"), payload_status(env, ref, "barbican-2")
        assert good.status_code == 200
        assert bad.status_code == 500 and bad.json()["description"] == FAILURE_GET
        r = store(env, "barbican-2")
        assert r.status_code == 500 and r.json()["description"] == FAILURE_STORE
        assert grew(env, "barbican-2", before, "cryptography.fernet.InvalidToken")
        # A project that never had a pKEK still works on the odd node...
        fresh = env.fresh_project()
        r = store(env, "barbican-2", role=fresh)
        assert r.status_code == 201, r.text
        fresh_ref = r.json()["secret_ref"]
    steady_state(env, seeded)
    # ...but what it wrote there was wrapped with the odd KEK: lost once the node is healed.
    for node in env.nodes:
        assert payload_status(env, fresh_ref, node.name, role=fresh).status_code == 500
    purge_project(env, fresh)


@pytest.mark.xdist_group("simple-crypto")
def test_kek_rotation_without_rewrap_breaks_every_existing_project(env_of):
    env = env_of("simple-crypto")
    seeded = seed(env)
    with FaultEngine(env).injected("kek_rotation_without_rewrap"):
        for node in env.nodes:
            r = payload_status(env, seeded[0].ref, node.name)
            assert r.status_code == 500 and r.json()["description"] == FAILURE_GET
            r = store(env, node.name)
            assert r.status_code == 500 and r.json()["description"] == FAILURE_STORE
        fresh = env.fresh_project()
        assert store(env, "barbican-1", role=fresh).status_code == 201
    steady_state(env, seeded)
    purge_project(env, fresh)  # its pKEK was wrapped with the dropped key


@pytest.mark.xdist_group("simple-crypto")
def test_documented_kek_rotation_loses_nothing(env_of):
    from harness.operations import rotate_simple_crypto_kek

    env = env_of("simple-crypto")
    seeded = seed(env)
    # A project lost before the rotation (its pKEK made by a node with another KEK, as
    # `diagnose` during a KEK mismatch can leave behind): rewrap_pkek errors on it, and
    # the rotation must report it, not fail on it (CI saw exactly that error).
    with FaultEngine(env).injected("kek_mismatch", {"node": "2"}):
        lost = env.fresh_project()
        assert store(env, "barbican-2", role=lost).status_code == 201
    old = env.ctx.secrets.kek
    report = rotate_simple_crypto_kek(env)
    assert env.ctx.secrets.kek != old
    assert report["rewrapped_projects"] >= 2
    assert report["unreadable_before_rotation"] >= 1
    manage_log = (env.run_dir / "logs" / "barbican-manage.log").read_text()
    assert "Error occurred" in manage_log.split("simple_crypto rewrap_pkek")[-1]
    purge_project(env, lost)
    for node in env.nodes:
        conf = (env.run_dir / "barbican" / node.name / ".barbican" / "barbican.conf").read_text()
        assert old not in conf and env.ctx.secrets.kek in conf
    steady_state(env, seeded)


@pytest.mark.xdist_group("simple-crypto")
def test_acl_removal_for_the_service_user(env_of):
    env = env_of("simple-crypto")
    ref = env.barbican().secrets.create(name="tls-key", payload=b"k" * 32).store()
    service_id = env.session("service").get_user_id()
    assert raw(env, "PUT", ref + "/acl", json={"read": {"users": [service_id]}}).status_code == 200
    assert payload_status(env, ref, "barbican-1", role="service").status_code == 200
    with FaultEngine(env).injected("acl_removal", {"ref": ref}):
        r = payload_status(env, ref, "barbican-1", role="service")
        assert r.status_code == 403
        assert r.json()["description"].startswith("Secret payload retrieval attempt not allowed")
        # The owner is not affected: an authorisation incident, not a crypto one.
        assert payload_status(env, ref, "barbican-1").status_code == 200
    assert payload_status(env, ref, "barbican-2", role="service").status_code == 200


@pytest.mark.xdist_group("simple-crypto")
def test_secret_expiry_gives_404_while_the_row_stays(env_of):
    env = env_of("simple-crypto")
    ref = env.barbican().secrets.create(name="expiring", payload=b"luks" * 8).store()
    secret_id = ref.rsplit("/", 1)[1]
    with FaultEngine(env).injected("secret_expiry", {"ref": ref}):
        r = raw(env, "GET", ref)
        # What Barbican answers for an expired secret is exactly what it answers for a deleted one.
        assert r.status_code == 404 and r.json()["description"] == "Secret not found.", r.text
        assert payload_status(env, ref, "barbican-2").status_code == 404
        with env.provider.database.connect("barbican") as conn, conn.cursor() as cur:
            cur.execute("SELECT deleted FROM secrets WHERE id = %s", (secret_id,))
            assert cur.fetchone() == (0,)
    assert env.barbican(node="barbican-2").secrets.get(ref).payload == b"luks" * 8


@pytest.mark.xdist_group("simple-crypto")
def test_container_member_deleted_while_in_use(env_of):
    env = env_of("simple-crypto")
    client = env.barbican()
    cert = client.secrets.create(name="cert", payload=b"-----BEGIN CERTIFICATE-----x", secret_type="certificate")
    key = client.secrets.create(name="key", payload=b"-----BEGIN PRIVATE KEY-----y", secret_type="private")
    container = client.containers.create_certificate(name="tls", certificate=cert, private_key=key)
    cref = container.store()
    key_ref = key.secret_ref
    with FaultEngine(env).injected("container_member_deleted", {"container_ref": cref}):
        members = {s["name"] for s in raw(env, "GET", cref).json()["secret_refs"]}
        assert members == {"certificate"}
        assert raw(env, "GET", key_ref).status_code == 404
    members = {s["name"]: s["secret_ref"] for s in raw(env, "GET", cref).json()["secret_refs"]}
    assert members == {"certificate": cert.secret_ref, "private_key": key_ref}
    assert env.barbican(node="barbican-2").secrets.get(key_ref).payload == b"-----BEGIN PRIVATE KEY-----y"


@pytest.mark.xdist_group("simple-crypto")
@pytest.mark.parametrize("microversion, force, expected", [
    ("1.0", False, 204), ("1.1", False, 204),    # consumers were only advisory
    ("1.2", False, 400), ("1.2", True, 204),      # 1.2 protects a consumed secret unless forced
])
def test_consumer_in_use_delete(env_of, microversion, force, expected):
    env = env_of("simple-crypto")
    ref = env.barbican().secrets.create(name="luks", payload=b"v" * 32).store()
    r = raw(env, "POST", ref + "/consumers",
            json={"service": "volume", "resource_type": "volume", "resource_id": "8e2c6e2a-0000-4000-8000-000000000001"})
    assert r.status_code == 200
    engine = FaultEngine(env)
    with engine.injected("consumer_in_use_delete", {"ref": ref, "microversion": microversion, "force": force}) as fid:
        undo = engine.journal.entries()[fid]["undo"]
        assert undo["status"] == expected
        if expected == 400:
            assert "Secret cannot be deleted as it has consumers." in undo["body"]
            assert raw(env, "GET", ref).status_code == 200
        else:
            assert raw(env, "GET", ref).status_code == 404  # gone although in use
    assert env.barbican().secrets.get(ref).payload == b"v" * 32


@pytest.mark.xdist_group("simple-crypto")
def test_node_kill_and_restart(env_of):
    env = env_of("simple-crypto")
    seeded = seed(env)
    with FaultEngine(env).injected("node_kill", {"node": "1"}):
        import requests

        with pytest.raises(requests.ConnectionError):
            requests.get(env.node(1).url + "/healthcheck", timeout=3)
        assert payload_status(env, seeded[0].ref, "barbican-2").status_code == 200
    steady_state(env, seeded)


def _who_listens(url: str) -> str:
    import psutil

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    pids = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
            and c.status == psutil.CONN_LISTEN}
    out = []
    for pid in sorted(p for p in pids if p):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            out.append(f"pid {pid} pgid {os.getpgid(pid)} {proc.status()} {' '.join(proc.cmdline())[:80]}")
    return f"listening on {port}: {out or 'nobody'}"


@pytest.mark.xdist_group("simple-crypto")
def test_node_pause_and_resume(env_of):
    import requests

    env = env_of("simple-crypto")
    seeded = seed(env)
    with FaultEngine(env).injected("node_pause", {"node": "2"}):
        try:
            r = requests.get(env.node(2).url + "/healthcheck", timeout=2)
        except requests.Timeout:
            pass
        else:  # once seen in CI: say who answered
            pytest.fail(f"paused barbican-2 answered {r.status_code}; {_who_listens(env.node(2).url)}; "
                        f"its records: {env.processes()}")
        assert payload_status(env, seeded[0].ref, "barbican-1").status_code == 200
    steady_state(env, seeded)


# -- multi-store --------------------------------------------------------------------------
@pytest.mark.xdist_group("multi-store")
def test_crypto_plugin_removed(env_of):
    env = env_of("multi-store")
    seeded = seed(env)
    before = log_of(env, "barbican-1")
    with FaultEngine(env).injected("crypto_plugin_removed", {"plugin": "simple_crypto"}):
        r = payload_status(env, seeded[0].ref, "barbican-1")
        assert r.status_code == 500 and r.json()["description"] == FAILURE_GET
        assert grew(env, "barbican-1", before, "CryptoPluginUnsupportedOperation")
        # New secrets go to the remaining (PKCS#11) plugin and work.
        client = env.barbican(node="barbican-1")
        ref = client.secrets.create(name="after-switch", payload=b"n" * 8).store()
        assert client.secrets.get(ref).payload == b"n" * 8
    steady_state(env, seeded)


# -- PKCS#11 on SoftHSM, through the shim --------------------------------------------------
def pair(env, node: str = "barbican-1") -> float:
    """One store + get through `node`; returns its duration in seconds."""
    client = env.barbican(node=node)
    start = time.monotonic()
    ref = client.secrets.create(name="hsm-probe", payload=b"h" * 16).store()
    assert client.secrets.get(ref).payload == b"h" * 16
    return time.monotonic() - start


@pytest.mark.xdist_group("pkcs11-softhsm")
def test_hsm_latency_slows_but_does_not_fail(env_of):
    env = env_of("pkcs11-softhsm")
    seeded = seed(env)
    baseline = min(pair(env) for _ in range(3))
    with FaultEngine(env).injected("hsm_latency", {"functions": ["C_Encrypt", "C_Decrypt"], "ms": 300}):
        slow = pair(env)
    # store = one C_Encrypt, get = one C_Decrypt, each delayed 300 ms in the request path:
    # the pair cannot finish in under 0.6 s. Against the baseline allow the non-HSM part of
    # a request its run-to-run noise on a busy 2-core machine (seen: 0.058 s vs a 0.080 s
    # best-of-3 baseline).
    assert slow >= 0.6
    assert slow - baseline >= 0.5
    steady_state(env, seeded)


@pytest.mark.xdist_group("pkcs11-softhsm")
def test_hsm_error_once_is_absorbed_by_reinit_and_retry(env_of):
    env = env_of("pkcs11-softhsm")
    seeded = seed(env)
    before = log_of(env, "barbican-1") + log_of(env, "barbican-2")
    with FaultEngine(env).injected("hsm_error", {"function": "C_Decrypt", "code": "CKR_DEVICE_ERROR", "count": 1}):
        # Whichever node gets the single error re-initialises and retries: the caller sees 200.
        for node in env.nodes:
            assert payload_status(env, seeded[0].ref, node.name).status_code == 200
    after = log_of(env, "barbican-1") + log_of(env, "barbican-2")
    assert after.count("Reinitializing PKCS#11 library: HSM returned response code: 0x30 CKR_DEVICE_ERROR") > \
        before.count("Reinitializing PKCS#11 library: HSM returned response code: 0x30 CKR_DEVICE_ERROR")
    steady_state(env, seeded)


@pytest.mark.xdist_group("pkcs11-softhsm")
def test_hsm_error_persistent_is_a_500(env_of):
    env = env_of("pkcs11-softhsm")
    seeded = seed(env)
    before = log_of(env, "barbican-1")
    with FaultEngine(env).injected("hsm_error", {"function": "C_Decrypt", "code": "CKR_DEVICE_ERROR"}):
        r = payload_status(env, seeded[0].ref, "barbican-1")
        assert r.status_code == 500 and r.json()["description"] == FAILURE_GET
        assert grew(env, "barbican-1", before, "CKR_DEVICE_ERROR")
        # Metadata needs no HSM: an operator's health check would still pass.
        assert raw(env, "GET", seeded[0].ref).status_code == 200
    steady_state(env, seeded)


@pytest.mark.xdist_group("pkcs11-softhsm")
def test_hsm_wrong_pin_after_restart(env_of):
    env = env_of("pkcs11-softhsm")
    seeded = seed(env)
    with FaultEngine(env).injected("hsm_wrong_pin", {"node": "2"}):
        before = log_of(env, "barbican-2")
        assert raw(env, "GET", env.node(2).url + "/healthcheck").status_code == 200
        assert raw(env, "GET", on_node_ref(env, seeded[0].ref, "barbican-2")).status_code == 200
        r = payload_status(env, seeded[0].ref, "barbican-2")
        assert r.status_code == 500 and r.json()["description"] == FAILURE_GET
        r = store(env, "barbican-2")
        assert r.status_code == 500 and r.json()["description"] == FAILURE_STORE
        assert grew(env, "barbican-2", before, "CKR_PIN_INCORRECT")
        assert payload_status(env, seeded[0].ref, "barbican-1").status_code == 200
    steady_state(env, seeded)


@pytest.mark.xdist_group("pkcs11-softhsm")
def test_hsm_pin_locked_at_relogin(env_of):
    env = env_of("pkcs11-softhsm")
    seeded = seed(env)
    before = log_of(env, "barbican-1")
    with FaultEngine(env).injected("hsm_wrong_pin", {"mode": "relogin", "code": "CKR_PIN_LOCKED"}):
        r = payload_status(env, seeded[0].ref, "barbican-1")
        assert r.status_code == 500
        assert grew(env, "barbican-1", before, "CKR_PIN_LOCKED")
    steady_state(env, seeded)


@pytest.mark.xdist_group("pkcs11-softhsm")
@pytest.mark.parametrize("fault, code", [
    # Barbican maps CKR_TOKEN_NOT_PRESENT to P11CryptoTokenException, whose message is this:
    ("hsm_token_absent", "No token was found in slot"),
    ("hsm_session_exhaustion", "CKR_SESSION_COUNT"),
])
def test_hsm_unavailable(env_of, fault, code):
    env = env_of("pkcs11-softhsm")
    seeded = seed(env)
    before = log_of(env, "barbican-1")
    with FaultEngine(env).injected(fault):
        r = payload_status(env, seeded[0].ref, "barbican-1")
        assert r.status_code == 500 and r.json()["description"] == FAILURE_GET
        r = store(env, "barbican-1")
        assert r.status_code == 500 and r.json()["description"] == FAILURE_STORE
        assert grew(env, "barbican-1", before, code)
    steady_state(env, seeded)


@pytest.mark.xdist_group("pkcs11-softhsm")
@known_bug("p11-reinit-token-absent-attributeerror")
def test_token_absent_during_reinit_is_reported_as_token_absent(env_of):
    env = env_of("pkcs11-softhsm")
    seeded = seed(env)
    before = log_of(env, "barbican-1")
    with FaultEngine(env).injected("hsm_token_absent"):
        payload_status(env, seeded[0].ref, "barbican-1")
        payload_status(env, seeded[0].ref, "barbican-1")
        grown = log_of(env, "barbican-1")[len(before):]
    steady_state(env, seeded)
    assert "object has no attribute 'slot_id'" not in grown


@pytest.mark.xdist_group("pkcs11-softhsm")
def test_mkek_deleted_is_hidden_by_the_cache_until_restart(env_of):
    env = env_of("pkcs11-softhsm")
    seeded = seed(env)
    # expire=ttl: nothing restarts, the pKEK cache (900 s) keeps serving: the silent phase.
    with FaultEngine(env).injected("hsm_key_deleted", {"key": "mkek", "expire": "ttl"}):
        assert payload_status(env, seeded[0].ref, "barbican-1").status_code == 200
    steady_state(env, seeded)
    # expire=restart: the nodes come back without the key.
    with FaultEngine(env).injected("hsm_key_deleted", {"key": "mkek", "expire": "restart"}):
        before = log_of(env, "barbican-1")
        r = payload_status(env, seeded[0].ref, "barbican-1")
        assert r.status_code == 500 and r.json()["description"] == FAILURE_GET
        assert grew(env, "barbican-1", before, "Could not find key labeled barbican_mkek")
    steady_state(env, seeded)


def on_node_ref(env, ref: str, node: str) -> str:
    return env.node(node).url + "/v1/" + ref.split("/v1/", 1)[1]


# -- async orders -------------------------------------------------------------------------
@pytest.mark.xdist_group("async-orders")
def test_worker_down_leaves_orders_pending(env_of):
    env = env_of("async-orders")
    client = env.barbican()
    with FaultEngine(env).injected("worker_down"):
        ref = client.orders.create_key(name="stuck", algorithm="aes", bit_length=256, mode="cbc",
                                       payload_content_type="application/octet-stream").submit()
        time.sleep(5)
        order = client.orders.get(ref)
        assert order.status == "PENDING" and order.secret_ref is None
    deadline = time.monotonic() + 60
    while client.orders.get(ref).status == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.5)
    # The queue kept the order: the restarted worker completes it.
    assert client.orders.get(ref).status == "ACTIVE"


# -- network links through the fault proxy ---------------------------------------------------
@pytest.mark.xdist_group("simple-crypto")
def test_keystone_outage_cached_tokens_work_new_tokens_get_503(env_of):
    env = env_of("simple-crypto")
    seeded = seed(env)
    assert payload_status(env, seeded[0].ref, "barbican-1").status_code == 200  # token now cached
    fresh = env.fresh_project()  # its token has never been seen by Barbican
    with FaultEngine(env).injected("keystone_outage"):
        assert payload_status(env, seeded[0].ref, "barbican-1").status_code == 200
        start = time.monotonic()
        r = raw(env, "GET", env.node(1).url + "/v1/secrets", role=fresh)
        assert r.status_code == 503
        assert "The Keystone service is temporarily unavailable." in r.text
        assert time.monotonic() - start >= 1.0  # keystonemiddleware retried first
    steady_state(env, seeded)


@pytest.mark.xdist_group("simple-crypto")
def test_keystone_latency_slows_first_validation(env_of):
    env = env_of("simple-crypto")
    fresh = env.fresh_project()
    with FaultEngine(env).injected("keystone_latency", {"ms": 1000}):
        start = time.monotonic()
        r = raw(env, "GET", env.node(1).url + "/v1/secrets", role=fresh)
        took = time.monotonic() - start
    assert r.status_code == 200
    assert took >= 1.0


@pytest.mark.xdist_group("simple-crypto")
def test_db_outage_then_recovery(env_of):
    env = env_of("simple-crypto")
    seeded = seed(env)
    before = log_of(env, "barbican-1")
    with FaultEngine(env).injected("db_outage"):
        r = store(env, "barbican-1")
        assert r.status_code == 500 and r.json()["description"] == FAILURE_STORE
        assert grew(env, "barbican-1", before, "DBConnectionError")
    steady_state(env, seeded)


@pytest.mark.xdist_group("simple-crypto")
@known_bug("db-outage-secret-get-no-response")
def test_db_outage_secret_get_answers_a_json_500(env_of):
    env = env_of("simple-crypto")
    ref = env.barbican().secrets.create(payload=b"db" * 8).store()
    with FaultEngine(env).injected("db_outage"):
        try:
            r = payload_status(env, ref, "barbican-1")
            answered = r.status_code == 500 and "description" in r.json()
        except Exception:  # noqa: BLE001 - the connection is closed without a response
            answered = False
    assert answered


@pytest.mark.xdist_group("simple-crypto")
def test_db_latency_slows_requests(env_of):
    env = env_of("simple-crypto")
    ref = env.barbican().secrets.create(payload=b"d" * 8).store()
    with FaultEngine(env).injected("db_latency", {"ms": 200}):
        start = time.monotonic()
        assert payload_status(env, ref, "barbican-1").status_code == 200
        took = time.monotonic() - start
    assert took >= 0.2


@pytest.mark.xdist_group("kmip")
def test_kmip_outage(env_of):
    env = env_of("kmip")
    ref = env.barbican().secrets.create(payload=b"k" * 32, secret_type="symmetric", algorithm="aes",
                                        bit_length=256, mode="cbc").store()
    with FaultEngine(env).injected("kmip_outage"):
        r = payload_status(env, ref, "barbican-1")
        assert r.status_code == 500 and r.json()["description"] == FAILURE_GET
    assert env.barbican().secrets.get(ref).payload == b"k" * 32


@pytest.mark.xdist_group("async-orders")
def test_queue_outage_orders_hang_then_complete_after_heal(env_of):
    import uuid

    from keystoneauth1.exceptions import ConnectTimeout

    env = env_of("async-orders")
    client = env.barbican()
    name = f"q-{uuid.uuid4().hex[:8]}"
    before = log_of(env, "barbican-1")
    with FaultEngine(env).injected("queue_outage"):
        url = env.node(1).url + "/v1/orders"
        body = {"type": "key", "meta": {"name": name, "algorithm": "aes", "bit_length": 256, "mode": "cbc",
                                        "payload_content_type": "application/octet-stream"}}
        # The POST blocks inside oslo.messaging's reconnect loop: only a timeout saves the caller.
        with pytest.raises(ConnectTimeout):
            env.session().post(url, json=body, timeout=5)
        time.sleep(2)
        assert grew(env, "barbican-1", before, "AMQP server on")  # oslo.messaging: "... is unreachable"
    # The order row was committed before the cast, which oslo.messaging retried until the
    # broker came back: the worker then processes it.
    deadline, status = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        found = [o for o in client.orders.list(limit=100) if o.name == name]
        status = found[0].status if found else None
        if status not in (None, "PENDING"):
            break
        time.sleep(1)
    print(f"order cast during the queue outage: {status} after heal")
    assert status == "ACTIVE"
