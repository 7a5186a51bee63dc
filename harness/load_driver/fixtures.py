"""What the consumers read, made by the writer role before the load starts.

- certificate containers (certificate, private key, intermediates) with a read ACL for
  the Octavia-like `service` user: Octavia reads tenants' TLS containers through an ACL;
- symmetric AES-256 keys: what Cinder creates per encrypted volume and Nova fetches on
  every attach (LUKS).

Every secret made here is recorded in the integrity ledger (sha256 of its payload), so
the checker verifies after the run that the faults lost none of them.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from dataclasses import asdict, dataclass, field

from harness.errors import HarnessError
from harness.ledger import Ledger, classify, sha256


@dataclass
class FixtureSecret:
    ref: str
    sha256: str


@dataclass
class Fixtures:
    containers: list[dict] = field(default_factory=list)  # {ref, secrets: {name: FixtureSecret}}
    luks_keys: list[FixtureSecret] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"containers": [{"ref": c["ref"], "secrets": {k: asdict(v) for k, v in c["secrets"].items()}}
                               for c in self.containers],
                "luks_keys": [asdict(k) for k in self.luks_keys]}


def _pem_bundle(cn: str) -> dict[str, tuple[bytes, str]]:
    """A self-signed EC certificate, its private key and an 'intermediate' (a second
    self-signed CA): what a TLS-terminating load balancer is given."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def cert_for(name: str, key) -> bytes:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
                .sign(key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM)

    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return {
        "certificate": (cert_for(cn, key), "certificate"),
        "private_key": (key_pem, "private"),
        "intermediates": (cert_for(f"{cn}-intermediate-ca", ca_key), "certificate"),
    }


class _Writer:
    def __init__(self, env, ledger: Ledger, role: str):
        self.env, self.ledger, self.role = env, ledger, role
        self.session = env.session(role)
        self._i = 0

    def node(self):
        nodes = self.env.nodes
        self._i += 1
        return nodes[self._i % len(nodes)]

    def secret(self, kind: str, payload: bytes, **fields) -> FixtureSecret:
        node = self.node()
        name = self.ledger.new_name(kind)
        body = {"name": name, "payload": base64.b64encode(payload).decode(),
                "payload_content_type": "application/octet-stream", "payload_content_encoding": "base64", **fields}
        try:
            r = self.session.post(node.url + "/v1/secrets", json=body, raise_exc=False, timeout=30)
        except Exception as exc:  # noqa: BLE001 - recorded, then reported
            self.ledger.created(name, payload, self.role, node.name, classify(exc), error=str(exc)[:200],
                                secret_type=fields.get("secret_type"), tags=["fixture"])
            raise HarnessError(f"load fixtures: storing a {kind} secret on {node.name} failed: {exc}") from None
        if r.status_code != 201:
            self.ledger.created(name, payload, self.role, node.name, "failed", error=f"HTTP {r.status_code}",
                                secret_type=fields.get("secret_type"), tags=["fixture"])
            raise HarnessError(f"load fixtures: storing a {kind} secret on {node.name}: HTTP {r.status_code} "
                               f"{r.text[:200]}")
        ref = r.json()["secret_ref"]
        self.ledger.created(name, payload, self.role, node.name, "ok", ref=ref,
                            secret_type=fields.get("secret_type"), tags=["fixture"])
        return FixtureSecret(ref, sha256(payload))

    def call(self, method: str, url: str, expect: int, **kwargs):
        r = self.session.request(url, method, raise_exc=False, timeout=30, **kwargs)
        if r.status_code != expect:
            raise HarnessError(f"load fixtures: {method} {url}: HTTP {r.status_code} {r.text[:200]}")
        return r


def make_fixtures(env, ledger: Ledger, *, writer: str, reader_user_id: str,
                  containers: int = 4, luks_keys: int = 16) -> Fixtures:
    w = _Writer(env, ledger, writer)
    out = Fixtures()
    acl = {"read": {"users": [reader_user_id], "project-access": True}}
    for i in range(containers):
        secrets: dict[str, FixtureSecret] = {}
        refs = []
        for member, (pem, secret_type) in _pem_bundle(f"lb-{i}.load.example").items():
            s = w.secret("cert", pem, secret_type=secret_type)
            w.call("PUT", s.ref + "/acl", 200, json=acl)
            secrets[member] = s
            refs.append({"name": member, "secret_ref": s.ref})
        # Barbican accepts only refs that name the node serving the request.
        node = w.node()
        for r in refs:
            r["secret_ref"] = node.url + "/v1/" + r["secret_ref"].partition("/v1/")[2]
        r = w.call("POST", node.url + "/v1/containers", 201,
                   json={"type": "certificate", "name": ledger.new_name("tls"), "secret_refs": refs})
        ref = r.json()["container_ref"]
        w.call("PUT", ref + "/acl", 200, json=acl)
        out.containers.append({"ref": ref, "secrets": secrets})
    for _ in range(luks_keys):
        out.luks_keys.append(w.secret("luks", os.urandom(32), secret_type="symmetric", algorithm="aes",
                                      bit_length=256, mode="xts"))
    return out
