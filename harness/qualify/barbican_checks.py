"""Barbican end to end on the module under qualification, through the PKCS#11 fault shim.

- `api_smoke`: every secret type with the content types Barbican accepts, stored on one node
  and read back byte-identical through another (python-barbicanclient), a key order, delete.
- `transient_fault`: one injected CKR_* (shim rule with count=1) must be absorbed by
  Barbican's re-initialise-and-retry path (the request succeeds, the log says so).

Every check returns `Row`s (PASS/FAIL per requirement). Payloads are never put in a row.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness import shim
from harness.qualify.measure import PAYLOAD_BYTES, settled_reset, settled_stats
from harness.qualify.report import Row
from harness.target import Capability
from harness.wait import WaitTimeout, wait_until

# Barbican's message when _call_pkcs11 re-initialises (barbican/plugin/crypto/p11_crypto.py,
# with the text of pkcs11._check_error).
REINIT_MESSAGE = "Reinitializing PKCS#11 library: HSM returned response code: {hex} {name}"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


# --------------------------------------------------------------------------------------
# Secret API smoke set (python-barbicanclient)
# --------------------------------------------------------------------------------------


def _key_material() -> dict[str, bytes]:
    """A real RSA key pair and a self-signed certificate, in PEM and DER."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qualify-hsm.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    pkcs8 = serialization.PrivateFormat.PKCS8
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    none = serialization.NoEncryption()
    return {
        "private_pem": key.private_bytes(serialization.Encoding.PEM, pkcs8, none),
        "private_der": key.private_bytes(serialization.Encoding.DER, pkcs8, none),
        "public_pem": key.public_key().public_bytes(serialization.Encoding.PEM, spki),
        "public_der": key.public_key().public_bytes(serialization.Encoding.DER, spki),
        "cert_pem": cert.public_bytes(serialization.Encoding.PEM),
        "cert_der": cert.public_bytes(serialization.Encoding.DER),
    }


@dataclass
class SecretCase:
    """One secret to store: `payload` is what barbicanclient sends (str: text/plain, bytes:
    application/octet-stream + base64), `expect` what a read must give back."""

    id: str
    secret_type: str
    payload: str | bytes
    expect: str | bytes
    content_type: str
    encoding: str | None = None      # set: the (deprecated) explicit content type/encoding path
    extra: dict = field(default_factory=dict)


def secret_cases() -> list[SecretCase]:
    km = _key_material()
    aes = secrets.token_bytes(32)
    big = secrets.token_bytes(10_000)          # many CBC blocks; under the 15000-byte base64 limit
    phrase = "correct horse battery staple \u00e9\u00e8"   # non-ASCII UTF-8

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    cases = [
        SecretCase("symmetric/octet-stream", "symmetric", aes, aes, "application/octet-stream",
                   extra={"algorithm": "aes", "bit_length": 256, "mode": "cbc"}),
        SecretCase("symmetric/text-plain", "symmetric", b64(aes), b64(aes), "text/plain",
                   extra={"algorithm": "aes", "bit_length": 256, "mode": "cbc"}),
        SecretCase("opaque/octet-stream-10KB", "opaque", big, big, "application/octet-stream"),
        SecretCase("opaque/text-plain", "opaque", "opaque text \u2713", "opaque text \u2713", "text/plain"),
        SecretCase("passphrase/text-plain", "passphrase", phrase, phrase, "text/plain"),
        SecretCase("passphrase/text-plain-charset-utf-8", "passphrase", phrase, phrase,
                   "text/plain;charset=utf-8", encoding=""),
        SecretCase("passphrase/octet-stream", "passphrase", phrase.encode(), phrase.encode(),
                   "application/octet-stream"),
        SecretCase("private/pem-text-plain", "private", km["private_pem"].decode(), km["private_pem"].decode(),
                   "text/plain", extra={"algorithm": "rsa", "bit_length": 2048}),
        SecretCase("private/der-octet-stream", "private", km["private_der"], km["private_der"],
                   "application/octet-stream", extra={"algorithm": "rsa", "bit_length": 2048}),
        SecretCase("private/der-pkcs8", "private", b64(km["private_der"]), km["private_der"],
                   "application/pkcs8", encoding="base64", extra={"algorithm": "rsa", "bit_length": 2048}),
        SecretCase("public/pem-text-plain", "public", km["public_pem"].decode(), km["public_pem"].decode(),
                   "text/plain", extra={"algorithm": "rsa", "bit_length": 2048}),
        SecretCase("public/der-octet-stream", "public", km["public_der"], km["public_der"],
                   "application/octet-stream", extra={"algorithm": "rsa", "bit_length": 2048}),
        SecretCase("certificate/pem-text-plain", "certificate", km["cert_pem"].decode(), km["cert_pem"].decode(),
                   "text/plain"),
        SecretCase("certificate/der-octet-stream", "certificate", km["cert_der"], km["cert_der"],
                   "application/octet-stream"),
    ]
    # Barbican strips surrounding whitespace from text/plain payloads (a PEM's last newline
    # included): documented behaviour, see conformance/api test_text_payload_is_stripped.
    for c in cases:
        if isinstance(c.expect, str):
            c.expect = c.expect.strip()
    return cases


def _store_case(client, case: SecretCase, tag: str) -> str:
    kwargs: dict[str, Any] = dict(name=f"qualify-{tag}-{case.id}", secret_type=case.secret_type, **case.extra)
    if case.encoding is not None:
        kwargs["payload_content_type"] = case.content_type
        if case.encoding:
            kwargs["payload_content_encoding"] = case.encoding
    return client.secrets.create(payload=case.payload, **kwargs).store()


def api_smoke(env, log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """Store every case on the first node, read it back through the last one, delete it;
    then a key order and its generated key."""
    rows: list[Row] = []
    nodes = [n.name for n in env.nodes]
    writer, reader = nodes[0], nodes[-1]
    w, r = env.barbican(node=writer), env.barbican(node=reader)
    tag = secrets.token_hex(3)
    for case in secret_cases():
        req = f"api.secret.{case.id}"
        ref = None
        try:
            ref = _store_case(w, case, tag)
            got = r.secrets.get(ref)
            payload = got.payload
            ctype = (got.content_types or {}).get("default")
            if got.secret_type != case.secret_type:
                rows.append(Row("api", req, False, f"secret_type reads back as {got.secret_type!r}"))
            elif payload != case.expect:
                rows.append(Row("api", req, False, f"stored through {writer}, the payload read through {reader} "
                                                   f"differs ({len(payload)} vs {len(case.expect)} bytes/chars)",
                                error="DATA_MISMATCH"))
            else:
                rows.append(Row("api", req, True, f"{case.secret_type} as {case.content_type} "
                                                  f"(stored content type {ctype}), stored through {writer}, "
                                                  f"read back identical through {reader}"))
        except Exception as exc:  # noqa: BLE001 - each case is its own requirement
            rows.append(Row("api", req, False, f"{case.content_type}: {_short(exc)}"))
        finally:
            if ref:
                with contextlib.suppress(Exception):   # the delete requirement below checks deletes
                    w.secrets.delete(ref)
    log(f"  {sum(x.passed for x in rows)}/{len(rows)} secret cases")
    rows.append(_check_delete(w, r, writer, reader, tag))
    rows.append(_check_key_order(env, w, r, writer, reader, tag))
    return rows


@contextlib.contextmanager
def _quiet_client_errors():
    """barbicanclient logs every 4xx at ERROR; an expected 404 is not worth a line on stderr."""
    logger = logging.getLogger("barbicanclient.client")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_delete(w, r, writer: str, reader: str, tag: str) -> Row:
    from barbicanclient import exceptions as bexc

    req = "api.secret.delete"
    try:
        ref = w.secrets.create(name=f"qualify-{tag}-delete", payload=secrets.token_bytes(32)).store()
        w.secrets.delete(ref)
        try:
            with _quiet_client_errors():
                _ = r.secrets.get(ref).payload
        except bexc.HTTPClientError as exc:
            if getattr(exc, "status_code", None) == 404:
                return Row("api", req, True, f"deleted through {writer}; {reader} answers 404 for it")
            return Row("api", req, False, f"after delete, {reader} answers {exc.status_code}, not 404")
        return Row("api", req, False, f"after delete, {reader} still returns the payload")
    except Exception as exc:  # noqa: BLE001
        return Row("api", req, False, _short(exc))


def _check_key_order(env, w, r, writer: str, reader: str, tag: str, timeout: float = 60) -> Row:
    req = "api.order.key"
    admin = env.barbican("admin", node=writer)
    order_ref = None
    try:
        order = w.orders.create_key(name=f"qualify-{tag}-order", algorithm="aes", bit_length=256, mode="cbc",
                                    payload_content_type="application/octet-stream")
        order_ref = order.submit()

        def settled():
            got = w.orders.get(order_ref)
            return got if got.status in ("ACTIVE", "ERROR") else None

        try:
            order = wait_until(settled, timeout=timeout, interval=0.3, what="the key order is ACTIVE or ERROR")
        except WaitTimeout:
            order = w.orders.get(order_ref)
        if order.status != "ACTIVE":
            why = f" ({order.error_status_code} {order.error_reason})" if order.status == "ERROR" else ""
            return Row("api", req, False, f"AES-256 key order is {order.status}{why}")
        key = r.secrets.get(order.secret_ref).payload
        with contextlib.suppress(Exception):   # cleanup only
            admin.secrets.delete(order.secret_ref)
        if len(key) != 32:
            return Row("api", req, False, f"the ordered AES-256 key reads back as {len(key)} bytes, not 32")
        return Row("api", req, True, f"AES-256 key order ACTIVE through {writer}; the generated 32-byte key "
                                     f"reads back through {reader}")
    except Exception as exc:  # noqa: BLE001
        return Row("api", req, False, _short(exc))
    finally:
        if order_ref:
            with contextlib.suppress(Exception):   # legacy policy: only a project admin deletes orders
                admin.orders.delete(order_ref)


# --------------------------------------------------------------------------------------
# Transient HSM errors: Barbican's re-initialise-and-retry path
# --------------------------------------------------------------------------------------


def _log_path(env, node: str):
    return env.run_dir / "logs" / f"{node}-app.log"


def _log_size(env, node: str) -> int:
    try:
        return _log_path(env, node).stat().st_size
    except FileNotFoundError:
        return 0


def _log_since(env, node: str, offset: int) -> str:
    try:
        with open(_log_path(env, node), "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def transient_fault(env, fn: str, code: str, op: str, log_wait: float = 10.0) -> Row:
    """One `code` from `fn` (shim rule count=1) during one `op` ("store" or "get") on the first
    node: the request must succeed and the node's log must show the re-initialisation."""
    control = env.facet(Capability.HSM_SHIM)
    node = env.nodes[0]
    client = env.barbican(node=node.name)
    session = env.session()
    payload = secrets.token_bytes(PAYLOAD_BYTES)
    rv = shim.rv_value(code)
    expected = REINIT_MESSAGE.format(hex=hex(rv), name=code)
    req = f"reinit.{code.removeprefix('CKR_').lower()}.{op}"
    ref = client.secrets.create(name="qualify-fault", payload=payload).store() if op == "get" else None
    offset = _log_size(env, node.name)
    settled_reset(control)
    control.set_rules([shim.Rule(fn=fn, rv=code, count=1)])
    error = None
    try:
        if op == "store":
            ref = client.secrets.create(name="qualify-fault", payload=payload).store()
        got = session.get(f"{ref}/payload", headers={"Accept": "application/octet-stream"}).content \
            if op == "get" else None
    except Exception as exc:  # noqa: BLE001 - the failure is the finding
        error = _short(exc)
    finally:
        control.clear()
    injected = settled_stats(control).get(fn, {}).get("injected", 0)
    try:
        seen = wait_until(lambda: expected in _log_since(env, node.name, offset), timeout=log_wait,
                          what=f"{node.name}'s log shows the re-initialisation")
    except WaitTimeout:
        seen = False
    what = f"{code} ({hex(rv)}) injected once into {fn} during a {op} on {node.name}"
    if injected != 1:
        return Row("reinit", req, False, f"{what}: the shim injected it {injected} times (expected 1); "
                                         f"the {op} did not call {fn}", error="NOT_EXERCISED")
    if op == "store" and error is None:
        # the stored secret must decrypt: the retry really stored it
        try:
            got = session.get(f"{ref}/payload", headers={"Accept": "application/octet-stream"}).content
        except Exception as exc:  # noqa: BLE001
            error = f"stored, but reading it back failed: {_short(exc)}"
    if error is not None:
        return Row("reinit", req, False, f"{what}: the request failed ({error})"
                                         + ("" if seen else "; no re-initialisation in the log"), error=code)
    if got != payload:
        return Row("reinit", req, False, f"{what}: the request succeeded but the payload differs",
                   error="DATA_MISMATCH")
    if not seen:
        return Row("reinit", req, False, f"{what}: the request succeeded but {node.name}'s log lacks "
                                         f"{expected!r}", error="NO_REINIT_LOGGED")
    return Row("reinit", req, True, f"{what}: the request succeeded and the log shows {expected!r}")


def recovery_after_burst(env, burst: int = 2) -> Row:
    """CKR_DEVICE_ERROR from C_Encrypt `burst` times in a row outlasts Barbican's single retry:
    that store fails. Once the HSM answers again, the next store on the same node must work and
    read back, without a restart (the plugin re-initialised itself and is usable)."""
    control = env.facet(Capability.HSM_SHIM)
    node = env.nodes[0]
    client = env.barbican(node=node.name)
    session = env.session()
    req = "reinit.recovery.store"
    what = f"CKR_DEVICE_ERROR injected into {burst} C_Encrypt calls in a row on {node.name}"
    settled_reset(control)
    control.set_rules([shim.Rule(fn="C_Encrypt", rv="CKR_DEVICE_ERROR", count=burst)])
    try:
        with _quiet_client_errors():
            client.secrets.create(name="qualify-burst", payload=secrets.token_bytes(PAYLOAD_BYTES)).store()
        during = "the store succeeded"
    except Exception as exc:  # noqa: BLE001 - the failure is expected: the burst outlasts the retry
        during = f"the store failed ({_short(exc)})"
    finally:
        control.clear()
    injected = settled_stats(control).get("C_Encrypt", {}).get("injected", 0)
    if injected != burst:
        return Row("reinit", req, False, f"{what}: the shim injected {injected} (expected {burst}); {during}",
                   error="NOT_EXERCISED")
    payload = secrets.token_bytes(PAYLOAD_BYTES)
    try:
        ref = client.secrets.create(name="qualify-after-burst", payload=payload).store()
        got = session.get(f"{ref}/payload", headers={"Accept": "application/octet-stream"}).content
    except Exception as exc:  # noqa: BLE001
        return Row("reinit", req, False, f"{what}: {during}; the next store after the HSM recovered failed too "
                                         f"({_short(exc)}): the node does not recover by itself",
                   error="NO_RECOVERY")
    if got != payload:
        return Row("reinit", req, False, f"{what}: {during}; afterwards a secret reads back different",
                   error="DATA_MISMATCH")
    return Row("reinit", req, True, f"{what}: {during} (one retry only); the next store and read on "
                                    f"{node.name} worked without a restart")


FAULTS: tuple[tuple[str, str, str], ...] = (
    ("C_Encrypt", "CKR_DEVICE_ERROR", "store"),
    ("C_Decrypt", "CKR_DEVICE_ERROR", "get"),
    ("C_OpenSession", "CKR_SESSION_COUNT", "store"),
    ("C_OpenSession", "CKR_SESSION_COUNT", "get"),
)


def fault_rows(env) -> list[Row]:
    return [transient_fault(env, fn, code, op) for fn, code, op in FAULTS] + [recovery_after_burst(env)]
