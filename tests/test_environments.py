"""Issue 2 acceptance: real environments as local processes (integration, real services).

Tests of one topology share one environment per xdist worker (xdist_group keeps them on
the same worker, so each topology comes up once per run)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def cross_node_round_trip(env) -> None:
    """Store through node 1, read back through node 2: text and binary, byte-identical."""
    first, last = env.nodes[0].name, env.nodes[-1].name
    text = f"text-{secrets.token_hex(8)}"
    blob = secrets.token_bytes(64)
    writer = env.barbican(node=first)
    text_ref = writer.secrets.create(name="rt-text", payload=text, payload_content_type="text/plain").store()
    blob_ref = writer.secrets.create(name="rt-blob", payload=blob).store()
    reader = env.barbican(node=last)
    assert reader.secrets.get(text_ref).payload == text
    assert reader.secrets.get(blob_ref).payload == blob
    for ref in (text_ref, blob_ref):
        writer.secrets.delete(ref)


def kek_plugins(env) -> set[str]:
    """Which crypto plugin wrapped the project KEKs, straight from Barbican's database."""
    with env.provider.database.connect("barbican") as conn, conn.cursor() as cur:
        cur.execute("SELECT DISTINCT plugin_name FROM kek_data")
        return {row[0] for row in cur.fetchall()}


@pytest.mark.xdist_group("simple-crypto")
def test_simple_crypto_secret_stored_on_node1_reads_back_on_node2(env_of):
    env = env_of("simple-crypto")
    assert len(env.nodes) == 2
    cross_node_round_trip(env)
    assert kek_plugins(env) == {"barbican.plugin.crypto.simple_crypto.SimpleCryptoPlugin"}


@pytest.mark.xdist_group("pkcs11-softhsm")
def test_pkcs11_secret_stored_on_node1_reads_back_on_node2(env_of):
    env = env_of("pkcs11-softhsm")
    assert len(env.nodes) == 2
    cross_node_round_trip(env)
    assert kek_plugins(env) == {"barbican.plugin.crypto.p11_crypto.P11CryptoPlugin"}
    # Both nodes open the same token: its MKEK and HMAC key were made by barbican-manage.
    labels = subprocess.run(
        ["pkcs11-tool", "--module", env.provider.softhsm.library, "--list-token-slots"],
        env={**os.environ, **env.provider.softhsm.env()}, capture_output=True, text=True, timeout=30).stdout
    assert "barbican" in labels


@pytest.mark.xdist_group("kmip")
def test_kmip_store_round_trip_through_pykmip(env_of):
    env = env_of("kmip")
    payload = secrets.token_bytes(32)
    client = env.barbican()
    ref = client.secrets.create(name="kmip-rt", payload=payload, secret_type="symmetric",
                                algorithm="aes", bit_length=256, mode="cbc").store()
    assert env.barbican().secrets.get(ref).payload == payload
    # The secret lives in the KMIP server: Barbican only keeps its KMIP unique id.
    with env.provider.database.connect("barbican") as conn, conn.cursor() as cur:
        cur.execute("SELECT m.`key` FROM secret_store_metadata m JOIN secrets s ON s.id = m.secret_id "
                    "WHERE s.id = %s", (ref.rsplit("/", 1)[1],))
        keys = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT COUNT(*) FROM encrypted_data e WHERE e.secret_id = %s", (ref.rsplit("/", 1)[1],))
        assert cur.fetchone()[0] == 0
    assert "key_uuid" in keys
    client.secrets.delete(ref)


@pytest.mark.xdist_group("async-orders")
def test_async_key_order_goes_active_through_the_worker(env_of):
    env = env_of("async-orders")
    client = env.barbican()
    ref = client.orders.create_key(name="async", algorithm="aes", bit_length=256, mode="cbc",
                                   payload_content_type="application/octet-stream").submit()
    order_id = ref.rsplit("/", 1)[1]
    deadline = time.monotonic() + 60
    while (order := client.orders.get(ref)).status == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert order.status == "ACTIVE", order.error_reason
    assert len(client.secrets.get(order.secret_ref).payload) == 32
    # Processed by barbican-worker from the queue, not inline in the API request.
    worker_log = (env.run_dir / "logs" / "barbican-worker-1-app.log").read_text()
    assert f"order ID is '{order_id}'" in worker_log
    api_log = (env.run_dir / "logs" / "barbican-1-app.log").read_text()
    assert f"order ID is '{order_id}'" not in api_log


@pytest.mark.xdist_group("simple-crypto")
def test_openstack_cli_works_with_written_clouds_yaml(env_of):
    env = env_of("simple-crypto")
    name = f"cli-{secrets.token_hex(4)}"
    ref = env.barbican().secrets.create(name=name, payload="x", payload_content_type="text/plain").store()
    cloud = env.cloud_names()[env.writer_role]["barbican-2"]
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "openstack"), "--os-cloud", cloud, "secret", "list", "--name", name,
         "-f", "json"],
        env={**os.environ, "OS_CLIENT_CONFIG_FILE": env.state["clouds_yaml"]},
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert [s["Secret href"].rsplit("/", 1)[1] for s in listed] == [ref.rsplit("/", 1)[1]]
    # The cloud for barbican-2 really goes to barbican-2 (one region per node).
    assert listed[0]["Secret href"].startswith(env.node("barbican-2").url)
    env.barbican().secrets.delete(ref)
