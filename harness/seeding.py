"""Seed data for scenarios: secrets of mixed types across projects and nodes, TLS
certificate containers the service user reads through an ACL, LUKS-style keys with
consumers. Every secret goes through the integrity ledger."""

from __future__ import annotations

import secrets as _rand
import uuid
from dataclasses import dataclass, field

from harness.errors import HarnessError
from harness.ledger import Ledger
from harness.triage.diagnose import Known

# (secret_type, extra create kwargs, payload factory): the mix a cloud really holds.
_TYPES = [
    ("opaque", {}, lambda: _rand.token_bytes(48)),
    ("symmetric", {"algorithm": "aes", "bit_length": 256, "mode": "cbc"}, lambda: _rand.token_bytes(32)),
    ("passphrase", {}, lambda: _rand.token_bytes(24)),
    ("private", {}, lambda: b"-----BEGIN PRIVATE KEY-----\n" + _rand.token_bytes(64) + b"\n-----END PRIVATE KEY-----\n"),
    ("public", {}, lambda: b"-----BEGIN PUBLIC KEY-----\n" + _rand.token_bytes(64) + b"\n-----END PUBLIC KEY-----\n"),
    ("certificate", {}, lambda: b"-----BEGIN CERTIFICATE-----\n" + _rand.token_bytes(64) + b"\n-----END CERTIFICATE-----\n"),
]


@dataclass
class SeedResult:
    refs: dict[str, list[str]] = field(
        default_factory=lambda: {"secret": [], "tls_container": [], "tls_key": [], "luks_key": []})
    known: Known = field(default_factory=Known)

    def resolve(self, value):
        """'@tls_container[0]' → its href; anything else unchanged."""
        from harness.scenario import REF

        m = REF.match(value) if isinstance(value, str) else None
        return self.refs[m.group(1)][int(m.group(2))] if m else value


def SEED_ROLES(target) -> list[str]:  # noqa: N802 - reads as the constant it almost is
    """The roles seeding acts as besides the writer: a second project's writer (when the
    target has one) and the Octavia-like service user reading TLS containers."""
    return [r for r in ("other-" + target.writer_role, "service") if r in target.roles]


def seed(env, ledger: Ledger, secrets: int, tls_containers: int, luks_keys: int) -> SeedResult:
    out = SeedResult()
    other = "other-" + env.writer_role
    writers = [env.writer_role, other] if other in env.roles else [env.writer_role]
    nodes = [n.name for n in env.nodes]
    if tls_containers and "service" not in env.roles:
        raise HarnessError(f"seeding TLS containers needs a service user (Octavia's) to read them: "
                           f"{env.name} has no role 'service' (a targets file names one)")

    def store(role: str, node: str, payload: bytes, tags=(), **kw) -> str:
        ref = ledger.store(env.barbican(role=role, node=node), role, node, payload, tags=tags, **kw)
        if ref is None:
            raise RuntimeError(f"seeding failed: a {kw.get('secret_type', 'opaque')} secret through {node}")
        out.known.sentinels.append({"role": role, "ref": ref})
        return ref

    # PyKMIP parses private/public keys and certificates: the KMIP store gets the types
    # whose payloads are opaque bytes (the seeded PEM blobs are not real keys).
    types = _TYPES[:3] if env.backends[0] == "kmip" else _TYPES
    for i in range(secrets):
        secret_type, extra, make = types[i % len(types)]
        out.refs["secret"].append(store(writers[i % len(writers)], nodes[i % len(nodes)], make(), tags=["secret"],
                                        secret_type=secret_type, **extra))
    service_user = env.session("service").get_user_id()
    for i in range(tls_containers):
        role, node = env.writer_role, nodes[i % len(nodes)]
        client = env.barbican(role=role, node=node)
        cert = store(role, node, _TYPES[5][2](), tags=["tls"], secret_type="certificate")
        key = store(role, node, _TYPES[3][2](), tags=["tls"], secret_type="private")
        container = client.containers.create_certificate(
            name=ledger.new_name("tls"), certificate=client.secrets.get(cert), private_key=client.secrets.get(key))
        cref = container.store()
        # Octavia reads the container and each member: all need the service user in the ACL.
        sess = env.session(role)
        for ref in (cref, cert, key):
            r = sess.put(ref + "/acl", json={"read": {"users": [service_user]}}, raise_exc=False, timeout=15)
            if r.status_code != 200:
                raise RuntimeError(f"seeding failed: ACL on {ref}: HTTP {r.status_code}")
        sess.post(cref + "/consumers", json={"name": "lb-listener", "URL": f"https://lb.example/{uuid.uuid4()}"},
                  raise_exc=False, timeout=15)
        out.refs["tls_container"].append(cref)
        out.refs["tls_key"].append(key)
        out.known.tls_containers.append(cref)
    for i in range(luks_keys):
        role, node = writers[i % len(writers)], nodes[i % len(nodes)]
        ref = store(role, node, _rand.token_bytes(32), tags=["luks"], secret_type="symmetric",
                    algorithm="aes", bit_length=256, mode="xts")
        env.session(role).post(ref + "/consumers", raise_exc=False, timeout=15,
                               json={"service": "volume", "resource_type": "volume", "resource_id": str(uuid.uuid4())})
        out.refs["luks_key"].append(ref)
        out.known.consumed_secrets.append({"role": role, "ref": ref})
    return out
