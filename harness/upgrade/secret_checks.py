"""The gate's secrets: written through the ledger on every store of the topology, read back
through every node after each hop, and new ones stored and read on every node and store."""

from __future__ import annotations

import contextlib
import secrets as _rand
import time
from dataclasses import dataclass, field

from harness.errors import HarnessError
from harness.services.barbican import BACKEND_PLUGINS

# backend → the plugin names Barbican's secret-stores listing uses (one home: the config's).
STORE_PLUGIN = {backend: plugins[0] for backend, plugins in BACKEND_PLUGINS.items()}
CRYPTO_PLUGIN = {backend: plugins[1] for backend, plugins in BACKEND_PLUGINS.items()}


@dataclass
class Seeded:
    store: dict[str, str] = field(default_factory=dict)  # ref → topology store name
    backend: dict[str, str] = field(default_factory=dict)  # ref → backend of that store
    types: dict[str, str] = field(default_factory=dict)  # ref → secret type


def store_refs(env) -> dict[str, str]:
    """topology store name → Barbican secret_store_ref (multiple stores only)."""
    sess = env.session(env.writer_role)
    r = sess.get(env.node().url + "/v1/secret-stores", raise_exc=False, timeout=15)
    if r.status_code != 200:
        raise HarnessError(f"GET /v1/secret-stores: HTTP {r.status_code}")
    listed = r.json()["secret_stores"]
    out = {}
    for spec in env.ctx.topology.stores:
        for s in listed:
            if (s.get("crypto_plugin") == CRYPTO_PLUGIN[spec.backend]
                    and s.get("secret_store_plugin") == STORE_PLUGIN[spec.backend]):
                out[spec.name] = s["secret_store_ref"]
                break
        else:
            raise HarnessError(f"store '{spec.name}' ({spec.backend}) is not in Barbican's secret-stores: {listed}")
    return out


def _set_preferred(env, store_ref: str | None, previous: str | None) -> None:
    """Project-preferred store of both seeded projects (as their admins)."""
    for admin in ("admin", "other-admin"):
        sess = env.session(admin)
        if previous:
            sess.delete(previous + "/preferred", raise_exc=False, timeout=15)
        if store_ref:
            r = sess.post(store_ref + "/preferred", raise_exc=False, timeout=15)
            if r.status_code != 204:
                raise HarnessError(f"setting the preferred store {store_ref} as {admin}: HTTP {r.status_code}")


def _order_key(env, ledger, node: str, timeout: float = 60.0) -> str:
    """A key Barbican generated (key order); its payload as read back on FROM goes into the ledger."""
    role = env.writer_role
    client = env.barbican(role=role, node=node)
    name = ledger.new_name("order")
    ref = client.orders.create_key(name=name, algorithm="aes", bit_length=256, mode="cbc",
                                   payload_content_type="application/octet-stream").submit()
    deadline = time.monotonic() + timeout
    while True:
        order = client.orders.get(ref)
        if order.status == "ACTIVE":
            break
        if order.status == "ERROR" or time.monotonic() > deadline:
            raise HarnessError(f"seeding: key order {ref} is {order.status}")
        time.sleep(0.3)
    payload = client.secrets.get(order.secret_ref).payload
    ledger.created(name, payload, role, node, "ok", ref=order.secret_ref, secret_type="symmetric", tags=["order"])
    return order.secret_ref


def seed_every_store(env, ledger, per_type: int = 1) -> Seeded:
    """Secrets of every type through the ledger, on each store of the topology (several
    stores: each made the preferred store of both projects in turn)."""
    from harness.seeding import seed

    topo = env.ctx.topology
    out = Seeded()
    refs = store_refs(env) if topo.multiple_stores else {}
    previous = None
    try:
        for spec in topo.stores:
            if topo.multiple_stores:
                _set_preferred(env, refs[spec.name], previous)
                previous = refs[spec.name]
            before = {e.ref for e in ledger.entries() if e.ref}
            seed(env, ledger, secrets=6 * per_type, tls_containers=1, luks_keys=1)
            _order_key(env, ledger, env.nodes[-1].name)
            for e in ledger.entries():
                if e.op == "create" and e.ref and e.ref not in before:
                    out.store[e.ref], out.backend[e.ref] = spec.name, spec.backend
                    out.types[e.ref] = e.secret_type or "opaque"
    finally:
        if previous:
            _set_preferred(env, None, previous)
    return out


def read_through_every_node(env, ledger) -> dict[str, dict[str, str]]:
    """ref → {node: why} for every acknowledged secret a node cannot read back byte-identical."""
    from harness.ledger import sha256

    bad: dict[str, dict[str, str]] = {}
    for e in ledger.entries():
        if e.op != "create" or e.outcome != "ok" or not e.ref:
            continue
        path = e.ref[e.ref.index("/v1/"):]
        for node in env.nodes:
            try:
                r = env.session(e.role).get(node.url + path + "/payload", raise_exc=False, timeout=15,
                                            headers={"Accept": "application/octet-stream"})
            except Exception as exc:  # noqa: BLE001 - a node that does not answer cannot read it
                bad.setdefault(e.ref, {})[node.name] = f"no answer ({type(exc).__name__})"
                continue
            if r.status_code != 200:
                bad.setdefault(e.ref, {})[node.name] = f"HTTP {r.status_code}"
            elif sha256(r.content) != e.sha256:
                bad.setdefault(e.ref, {})[node.name] = "payload differs"
    return bad


def new_secrets_work(env, stores: dict[str, str] | None) -> dict[str, str]:
    """'node[/store]' → error, for each node (and store) where a new secret cannot be stored
    and read back in the seeded project; {} when all work."""
    errors = {}
    targets = [(None, None)] if not stores else list(stores.items())
    previous = None
    try:
        for store_name, store_ref in targets:
            if store_ref:
                _set_preferred(env, store_ref, previous)
                previous = store_ref
            for node in env.nodes:
                key = node.name + (f"/{store_name}" if store_name else "")
                payload = _rand.token_hex(16)
                try:
                    client = env.barbican(node=node.name)
                    ref = client.secrets.create(name="upgrade-gate-new", payload=payload,
                                                payload_content_type="text/plain").store()
                    if client.secrets.get(ref).payload != payload:
                        errors[key] = "read back different"
                    client.secrets.delete(ref)
                except Exception as exc:  # noqa: BLE001 - reported
                    errors[key] = f"{type(exc).__name__}: {str(exc)[:160]}"
    finally:
        if previous:
            with contextlib.suppress(Exception):
                _set_preferred(env, None, previous)
    return errors
