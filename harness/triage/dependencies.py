"""Barbican's shared dependencies, probed directly and side by side, and what depends on what.

A frozen database makes Keystone hang too (they share it), so a Keystone token that does not
come is a symptom, not a cause: the probes ask each dependency itself (the database by a SQL
connection, Keystone by a token issue, the HSM by a PKCS#11 session, the queue, KMIP and Vault
by their own ports or API), each within a budget, all at once; `root_causes` then names the
failed dependencies whose own dependencies are fine.

A dependency a target cannot reach (an existing cloud has no database access) is not probed
and simply absent from the results.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable

from harness.target import Capability

BUDGET_S = 3.0  # per probe; they run in parallel, so also about the whole round

# What each part needs to work. Barbican needs Keystone only for tokens it has not
# validated yet (its cache keeps old ones working), and its store backends for crypto.
DEPENDS_ON: dict[str, tuple[str, ...]] = {
    "keystone": ("database",),
    "barbican": ("database", "keystone", "hsm", "kmip", "vault", "queue"),
}


def root_causes(results: dict[str, dict]) -> tuple[list[str], list[str]]:
    """(failed dependencies that explain the others, failed ones explained by a root)."""
    failed = {name for name, r in results.items() if r.get("status") != "ok"}
    roots = sorted(n for n in failed if not any(up in failed for up in DEPENDS_ON.get(n, ())))
    return roots, sorted(failed - set(roots))


def dependents(name: str) -> list[str]:
    """The parts that need `name` (directly), for "listed as affected"."""
    return sorted(part for part, needs in DEPENDS_ON.items() if name in needs)


def _timed(fn: Callable[[], str]) -> dict:
    start = time.monotonic()
    try:
        detail = fn()
        status = "ok"
    except Exception as exc:  # noqa: BLE001 - the probe's result, whatever failed
        name = type(exc).__name__
        status = "timeout" if "imeout" in name or any(w in str(exc) for w in ("timed out", "no answer")) else "error"
        detail = f"{name}: {str(exc)[:160]}"
    return {"status": status, "detail": detail, "seconds": round(time.monotonic() - start, 3)}


def _tcp(host: str, port: int, budget: float) -> str:
    with socket.create_connection((host, port), timeout=budget):
        return f"{host}:{port} accepts connections"


def _probes(target, role: str, budget: float, light: bool) -> dict[str, Callable[[], str]]:
    caps = getattr(target, "capabilities", frozenset())
    probes: dict[str, Callable[[], str]] = {}

    def keystone() -> str:
        from harness.identity import session_for

        # A session of its own with an explicit timeout: a brand-new token, as a new client gets.
        session_for(target.keystone_url, target.credentials[role], timeout=budget).get_token()
        return "token issued"
    if not light:
        probes["keystone"] = keystone

    if Capability.DATABASE in caps:
        def database() -> str:
            # connect/read timeouts: a frozen mariadbd accepts the TCP connection (the kernel
            # does) and then never sends its greeting.
            with target.facet(Capability.DATABASE).connect("barbican", timeout=budget) as conn, \
                    conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
            return "SELECT 1 answered"
        probes["database"] = database

    if not light and Capability.HSM_TOKEN in caps and hasattr(target.facet(Capability.HSM_TOKEN), "probe"):
        probes["hsm"] = lambda: target.facet(Capability.HSM_TOKEN).probe(timeout=budget)

    if Capability.VAULT in caps:
        def vault() -> str:
            status = target.facet(Capability.VAULT).seal_status()
            if status.get("sealed"):
                raise RuntimeError("OpenBao is sealed")
            return "unsealed"
        probes["vault"] = vault

    endpoints = getattr(target, "dependency_endpoints", lambda: {})()
    for name, (host, port) in endpoints.items():
        probes[name] = lambda host=host, port=port: _tcp(host, port, budget)
    return probes


def probe_dependencies(target, role: str, budget: float = BUDGET_S, light: bool = False) -> dict[str, dict]:
    """Every dependency the target lets us reach, in parallel; each result
    {status: ok|timeout|error, detail, seconds}. Returns within about `budget` seconds:
    a probe still running then counts as a timeout (each has its own timeout, so its
    thread ends soon after).

    `light`: without the two that cost the services CPU (a Keystone password login, a
    process opening the HSM), for a diagnosis repeated every few seconds beside its own
    token issue: on a loaded machine they slowed the very probes they ran beside."""
    probes = _probes(target, role, budget, light)
    results: dict[str, dict] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, len(probes)), thread_name_prefix="triage-dep")
    futures = {pool.submit(_timed, fn): name for name, fn in probes.items()}
    done, _ = wait(futures, timeout=budget + 0.5)
    for future, name in futures.items():
        results[name] = future.result() if future in done else {
            "status": "timeout", "detail": f"no answer within {budget:.1f} s", "seconds": budget}
    pool.shutdown(wait=False)
    return results
