"""Measurements of Barbican on the module under qualification:

- `measure_load`: throughput and latency percentiles of store and get at N concurrent
  clients, each client a thread with its own Keystone session, for a bounded duration.
- `hsm_calls_per_operation`: PKCS#11 calls per API operation from the shim's counters.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from harness import shim
from harness.identity import session_for
from harness.qualify.report import Row
from harness.target import Capability

STATS_SETTLE_S = 2.5 * shim.FLUSH_INTERVAL_S   # let every process flush its counters


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


def settled_reset(control) -> None:
    time.sleep(STATS_SETTLE_S)
    control.reset_stats()


def settled_stats(control) -> dict[str, dict]:
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

    settled_reset(control)
    refs = [client.secrets.create(name="qualify-calls", payload=payload).store() for _ in range(n)]
    out["store"] = _per_op(settled_stats(control), n)

    session = env.session()
    settled_reset(control)
    for ref in refs:
        if session.get(f"{ref}/payload", headers={"Accept": "application/octet-stream"}).content != payload:
            raise RuntimeError("payload read back different while counting HSM calls")
    out["get"] = _per_op(settled_stats(control), n)

    settled_reset(control)
    for ref in refs:
        client.secrets.delete(ref)
    out["delete"] = _per_op(settled_stats(control), n)

    if fresh_projects:
        roles = [env.fresh_project() for _ in range(fresh_projects)]
        clients = [env.barbican(role=role, node=env.nodes[0].name) for role in roles]
        settled_reset(control)
        for c in clients:
            c.secrets.create(name="qualify-first", payload=payload).store()
        out["store_first_in_project"] = _per_op(settled_stats(control), fresh_projects)
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


