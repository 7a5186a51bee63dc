"""Consumed secrets and their expirations, found from the cloud itself: the seed manifest is
only a hint, since on a real cloud every consumer (a volume, a load balancer) is someone else's.

- the database (harness environments, Capability.DATABASE; then the only source): every secret with a consumer
  registered on it or on a container holding it, already expired or expiring within the
  horizon (the API no longer lists an expired secret: only the database still knows it);
- the API, as each role we hold: secrets expiring within the horizon
  (GET /v1/secrets?expiration=lt:...), kept when GET .../consumers lists a consumer; and
  containers whose listing shows consumers.
"""

from __future__ import annotations

import datetime as dt

from harness.target import Capability

LIMIT = 100  # rows per query / list call: bounded time on a big cloud
CONSUMERS_API = {"OpenStack-API-Version": "key-manager 1.1"}  # secret consumers need 1.1

# Consumers on the secret itself or on a container that holds it.
_SQL = """
SELECT s.id, s.project_id, s.expiration, s.expiration < UTC_TIMESTAMP()
FROM secrets s
WHERE s.deleted = 0 AND s.expiration IS NOT NULL AND s.expiration < UTC_TIMESTAMP() + INTERVAL %s SECOND
  AND (EXISTS (SELECT 1 FROM secret_consumer_metadata c WHERE c.secret_id = s.id AND c.deleted = 0)
       OR EXISTS (SELECT 1 FROM container_secret cs JOIN container_consumer_metadata cc
                  ON cc.container_id = cs.container_id AND cc.deleted = 0
                  WHERE cs.secret_id = s.id AND cs.deleted = 0))
ORDER BY s.expiration LIMIT %s
"""


def _iso(when) -> str:
    return when.replace(tzinfo=dt.timezone.utc).isoformat() if isinstance(when, dt.datetime) else str(when)


def from_database(target, horizon_s: float, timeout: float = 3.0) -> list[dict]:
    """[{id, expiration, expired, source}]; [] when the target has no database access."""
    if Capability.DATABASE not in getattr(target, "capabilities", frozenset()):
        return []
    with target.facet(Capability.DATABASE).connect("barbican", timeout=timeout) as conn, conn.cursor() as cur:
        cur.execute(_SQL, (int(horizon_s), LIMIT))
        rows = cur.fetchall()
    return [{"id": r[0], "expiration": _iso(r[2]), "expired": bool(r[3]), "source": "database"} for r in rows]


def from_api(target, roles: list[str], horizon_s: float, timeout: float = 5.0) -> list[dict]:
    """Consumed secrets expiring within the horizon that the roles can list (not yet
    expired: the API hides expired secrets)."""
    if not target.nodes:
        return []
    url = target.nodes[0].url
    until = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=horizon_s)).strftime("%Y-%m-%dT%H:%M:%S")
    found: dict[str, dict] = {}
    for role in roles:
        sess = target.session(role)
        r = sess.get(url + "/v1/secrets", params={"expiration": f"lt:{until}", "limit": LIMIT},
                     raise_exc=False, timeout=timeout)
        if r.status_code != 200:
            continue
        for s in r.json().get("secrets", []):
            sid = s["secret_ref"].rstrip("/").rsplit("/", 1)[1]
            if sid in found:
                continue
            c = sess.get(url + f"/v1/secrets/{sid}/consumers", headers=CONSUMERS_API, raise_exc=False,
                         timeout=timeout)
            if c.status_code == 200 and c.json().get("consumers"):
                found[sid] = {"id": sid, "expiration": s.get("expiration"), "expired": False,
                              "source": f"api ({role})", "role": role}
    return list(found.values())


def consumed_expiring(target, roles: list[str], horizon_s: float) -> tuple[list[dict], list[str]]:
    """From the database where the target has one (it sees every project, and expired
    secrets too), else from the API; also what could not be asked (one line each)."""
    found: dict[str, dict] = {}
    problems: list[str] = []
    if Capability.DATABASE in getattr(target, "capabilities", frozenset()):
        sources = (("database", lambda: from_database(target, horizon_s)),)
    else:
        sources = (("api", lambda: from_api(target, roles, horizon_s)),)
    for name, fn in sources:
        try:
            for item in fn():
                found.setdefault(item["id"], item)
        except Exception as exc:  # noqa: BLE001 - discovery is best effort; the probes say what is down
            problems.append(f"{name}: {type(exc).__name__}: {str(exc)[:120]}")
    return sorted(found.values(), key=lambda i: i["expiration"] or ""), problems


def service_containers(target, roles: list[str], service_role: str = "service", timeout: float = 5.0,
                       limit: int = 20) -> list[str]:
    """Consumed containers whose ACL grants read to the service user (what a load balancer
    reads its TLS certificate through), as the roles can list them."""
    creds = getattr(target, "credentials", {})
    if service_role not in creds or not target.nodes:
        return []
    service_user = target.session(service_role).get_user_id()
    url = target.nodes[0].url
    found: list[str] = []
    for role in roles:
        sess = target.session(role)
        r = sess.get(url + "/v1/containers", params={"limit": LIMIT}, raise_exc=False, timeout=timeout)
        if r.status_code != 200:
            continue
        for c in r.json().get("containers", []):
            ref = c["container_ref"]
            if not c.get("consumers") or ref in found:
                continue
            acl = sess.get(ref + "/acl", raise_exc=False, timeout=timeout)
            if acl.status_code == 200 and service_user in (acl.json().get("read") or {}).get("users", []):
                found.append(ref)
            if len(found) >= limit:
                return found
    return found
