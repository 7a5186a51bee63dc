"""Barbican-side checks of `qualify-hsm`, against an Environment whose p11_crypto store runs
on the module under qualification (through the PKCS#11 fault shim).

- `api_smoke`: every secret type with the content types Barbican accepts, stored on one node
  and read back byte-identical through another (python-barbicanclient), a key order, delete.
- `measure_load`: throughput and latency percentiles of store and get at N concurrent
  clients, each client a thread with its own Keystone session, for a bounded duration.
- `hsm_calls_per_operation`: PKCS#11 calls per API operation from the shim's counters.
- `transient_fault`: one injected CKR_* (shim rule with count=1) must be absorbed by
  Barbican's re-initialise-and-retry path (the request succeeds, the log says so).

Every check returns `Row`s (PASS/FAIL per requirement). Payloads are never put in a row.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from harness import shim
from harness.identity import session_for
from harness.target import Capability

# Barbican's message when _call_pkcs11 re-initialises (barbican/plugin/crypto/p11_crypto.py,
# with the text of pkcs11._check_error).
REINIT_MESSAGE = "Reinitializing PKCS#11 library: HSM returned response code: {hex} {name}"
STATS_SETTLE_S = 2.5 * shim.FLUSH_INTERVAL_S   # let every process flush its counters


@dataclass
class Row:
    """One requirement's outcome (the backend stage reuses p11.CheckResult's fields)."""

    stage: str
    requirement: str
    passed: bool
    detail: str
    option: str | None = None
    value: str | None = None
    hint: str | None = None
    mechanism: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        deadline = time.monotonic() + timeout
        while True:
            order = w.orders.get(order_ref)
            if order.status in ("ACTIVE", "ERROR") or time.monotonic() > deadline:
                break
            time.sleep(0.3)
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
# Throughput and latency
# --------------------------------------------------------------------------------------

PAYLOAD_BYTES = 32


@dataclass
class LoadResult:
    op: str                      # "store" (POST /v1/secrets) or "get" (GET /v1/secrets/{id}/payload)
    clients: int
    seconds: float
    ok: int
    errors: int
    ops_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None
    error_kinds: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 1)) - 1))
    return sorted_values[k]


class _Client:
    """One load client: its own Keystone session (token fetched up front), one node."""

    def __init__(self, env, node_url: str, role: str):
        self.session = session_for(env.keystone_url, env.credentials[role])
        self.session.get_token()
        self.url = node_url.rstrip("/")

    def store(self, payload: bytes) -> str:
        body = {"name": "qualify-load", "secret_type": "opaque",
                "payload": base64.b64encode(payload).decode(), "payload_content_type": "application/octet-stream",
                "payload_content_encoding": "base64"}
        return self.session.post(f"{self.url}/v1/secrets", json=body).json()["secret_ref"]

    def get(self, ref: str) -> bytes:
        return self.session.get(f"{ref}/payload", headers={"Accept": "application/octet-stream"}).content


def _error_kind(exc: BaseException) -> str:
    status = getattr(exc, "http_status", None) or getattr(getattr(exc, "response", None), "status_code", None)
    return f"HTTP {status}" if status else type(exc).__name__


def _run_phase(op: str, clients: list[_Client], seconds: float, work: Callable[[int, int, _Client], None]
               ) -> LoadResult:
    lat: list[list[float]] = [[] for _ in clients]
    errs: list[dict[str, int]] = [{} for _ in clients]
    start_gate = threading.Barrier(len(clients) + 1)
    ends = [0.0] * len(clients)
    box: dict[str, float] = {}

    def loop(i: int) -> None:
        start_gate.wait()
        deadline = box["deadline"]
        k = 0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                work(i, k, clients[i])
                lat[i].append(time.monotonic() - t0)
            except Exception as exc:  # noqa: BLE001 - counted, the load goes on
                kind = _error_kind(exc)
                errs[i][kind] = errs[i].get(kind, 0) + 1
            k += 1
        ends[i] = time.monotonic()

    threads = [threading.Thread(target=loop, args=(i,), daemon=True, name=f"qualify-{op}-{i}")
               for i in range(len(clients))]
    for t in threads:
        t.start()
    t_start = time.monotonic()
    box["deadline"] = t_start + seconds
    start_gate.wait()
    for t in threads:
        t.join(seconds + 60)
    elapsed = max(ends + [t_start + 1e-9]) - t_start
    values = sorted(v for per in lat for v in per)
    kinds: dict[str, int] = {}
    for e in errs:
        for k, n in e.items():
            kinds[k] = kinds.get(k, 0) + n

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    return LoadResult(op, len(clients), round(elapsed, 2), len(values), sum(kinds.values()),
                      round(len(values) / elapsed, 1) if elapsed > 0 else 0.0,
                      ms(_percentile(values, 0.50)), ms(_percentile(values, 0.95)),
                      ms(values[-1] if values else None), kinds)


def measure_load(env, levels: tuple[int, ...] = (1, 4, 16), seconds: float = 10.0,
                 log: Callable[[str], None] = lambda s: None) -> list[LoadResult]:
    """For each level: `seconds` of stores by N clients, then `seconds` of gets by N clients
    (of secrets stored in the store phases). Clients are spread over the nodes round-robin."""
    role = env.writer_role
    urls = [n.url for n in env.nodes]
    pool = [_Client(env, urls[i % len(urls)], role) for i in range(max(levels))]
    payload = secrets.token_bytes(PAYLOAD_BYTES)
    refs: list[str] = []
    lock = threading.Lock()
    results: list[LoadResult] = []

    def store(i: int, k: int, c: _Client) -> None:
        ref = c.store(payload)
        with lock:
            refs.append(ref)

    for n in levels:
        clients = pool[:n]
        res = _run_phase("store", clients, seconds, store)
        results.append(res)
        log(f"  store x{n}: {res.ops_per_s} ops/s, p95 {res.p95_ms} ms, {res.errors} errors")
        if not refs:
            continue
        snapshot = list(refs)

        def get(i: int, k: int, c: _Client, snapshot=snapshot, n=n) -> None:
            data = c.get(snapshot[(i + k * n) % len(snapshot)])
            if data != payload:
                raise ValueError("payload mismatch")

        res = _run_phase("get", clients, seconds, get)
        results.append(res)
        log(f"  get   x{n}: {res.ops_per_s} ops/s, p95 {res.p95_ms} ms, {res.errors} errors")
    return results


# --------------------------------------------------------------------------------------
# PKCS#11 calls per API operation
# --------------------------------------------------------------------------------------


def _settled_reset(control) -> None:
    time.sleep(STATS_SETTLE_S)
    control.reset_stats()


def _settled_stats(control) -> dict[str, dict]:
    time.sleep(STATS_SETTLE_S)
    return control.stats()


def _per_op(stats: dict[str, dict], n: int) -> dict[str, Any]:
    calls = {fn: round(e["calls"] / n, 2) for fn, e in sorted(stats.items()) if e["calls"]}
    errors = {fn: e["errors"] for fn, e in sorted(stats.items()) if e["errors"]}
    return {"n": n, "total": round(sum(e["calls"] for e in stats.values()) / n, 2), "calls": calls,
            "errors": errors}


def hsm_calls_per_operation(env, n: int = 20, fresh_projects: int = 3) -> dict[str, dict]:
    """Sequential batches through the first node, counters reset before each batch:
    store (project KEK cached), get, delete, and the first store of a new project."""
    control = env.facet(Capability.HSM_SHIM)
    client = env.barbican(node=env.nodes[0].name)
    out: dict[str, dict] = {}
    client.secrets.create(name="qualify-warm", payload=b"w" * PAYLOAD_BYTES).store()  # project KEK exists
    payload = secrets.token_bytes(PAYLOAD_BYTES)

    _settled_reset(control)
    refs = [client.secrets.create(name="qualify-calls", payload=payload).store() for _ in range(n)]
    out["store"] = _per_op(_settled_stats(control), n)

    session = env.session()
    _settled_reset(control)
    for ref in refs:
        if session.get(f"{ref}/payload", headers={"Accept": "application/octet-stream"}).content != payload:
            raise RuntimeError("payload read back different while counting HSM calls")
    out["get"] = _per_op(_settled_stats(control), n)

    _settled_reset(control)
    for ref in refs:
        client.secrets.delete(ref)
    out["delete"] = _per_op(_settled_stats(control), n)

    if fresh_projects:
        roles = [env.fresh_project() for _ in range(fresh_projects)]
        clients = [env.barbican(role=role, node=env.nodes[0].name) for role in roles]
        _settled_reset(control)
        for c in clients:
            c.secrets.create(name="qualify-first", payload=payload).store()
        out["store_first_in_project"] = _per_op(_settled_stats(control), fresh_projects)
    return out


def hsm_call_rows(calls: dict[str, dict]) -> list[Row]:
    """The secrets really go through the HSM: one C_Encrypt per store, one C_Decrypt per get,
    no PKCS#11 errors in the counted batches."""
    rows = []
    for op, fn in (("store", "C_Encrypt"), ("get", "C_Decrypt")):
        got = calls.get(op, {}).get("calls", {}).get(fn, 0)
        errors = calls.get(op, {}).get("errors", {})
        ok = got == 1 and not errors
        detail = (f"{fn} per {op}: {got:g} (of {calls.get(op, {}).get('total', 0):g} PKCS#11 calls per {op})"
                  + (f"; PKCS#11 errors: {errors}" if errors else ""))
        rows.append(Row("hsm", f"hsm.{op}", ok, detail, error=None if ok else "UNEXPECTED_HSM_CALLS"))
    return rows


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
    _settled_reset(control)
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
    injected = _settled_stats(control).get(fn, {}).get("injected", 0)
    deadline = time.monotonic() + log_wait
    seen = False
    while True:
        seen = expected in _log_since(env, node.name, offset)
        if seen or time.monotonic() > deadline:
            break
        time.sleep(0.2)
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


FAULTS: tuple[tuple[str, str, str], ...] = (
    ("C_Encrypt", "CKR_DEVICE_ERROR", "store"),
    ("C_Decrypt", "CKR_DEVICE_ERROR", "get"),
    ("C_OpenSession", "CKR_SESSION_COUNT", "store"),
    ("C_OpenSession", "CKR_SESSION_COUNT", "get"),
)


def fault_rows(env) -> list[Row]:
    return [transient_fault(env, fn, code, op) for fn, code, op in FAULTS]
