"""The diagnosis: probes an operator could run, then a verdict.

First the shared dependencies (dependencies.py: database, Keystone, HSM ...), in parallel
within a budget; when the database or Keystone does not answer, that is the verdict and the
nodes are only asked whether they answer. Otherwise probes, per node: reachability (with a
short timeout), a canary store+get in an existing project (which has a project KEK), a
canary in a fresh project (environments only: a project Barbican has never seen), reads of
pre-existing sentinel secrets; then the service user reading consumed TLS containers, an
expiry audit of consumed secrets, a Keystone token issue, an order probe, and the service
logs (new lines, or a one-off diagnosis's window: logwindow.py).

Canaries are the only writes, made in the project given, and deleted afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets as _rand
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from concurrent.futures import ThreadPoolExecutor

import requests

from harness.target import Capability
from harness.triage import discovery
from harness.triage.dependencies import BUDGET_S, dependents, probe_dependencies, root_causes
from harness.triage.logwindow import LogLine, as_log_line, current, local_naive
from harness.triage.signatures import REINIT, match

HTTP_TIMEOUT = 8  # seconds: a frozen node must not stall the diagnosis
HORIZON_S = 24 * 3600.0  # expiry audit: consumed secrets expiring within this count
SLOW_PAIR_S = 1.0  # a canary store+get slower than this is "degraded"


@dataclass
class Evidence:
    source: str  # probe or log file
    detail: str

    def __str__(self) -> str:
        return f"{self.source}: {self.detail}"


@dataclass
class Verdict:
    category: str
    incident: str  # outage | data_loss | none
    blast_radius: str  # existing_secrets_at_risk | new_operations_only | none
    affected_nodes: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    probes: dict = field(default_factory=dict)
    root_cause: str = ""  # the dependency that explains the rest (database, keystone, hsm ...)
    affected_services: list[str] = field(default_factory=list)  # other parts that need it
    seconds: float = 0.0  # how long the diagnosis took, probes included
    time: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat())

    def to_dict(self) -> dict:
        return asdict(self)

    def matches(self, category: str | None = None, blast_radius: str | None = None,
                affected_nodes: list[str] | None = None) -> bool:
        return ((category is None or self.category == category)
                and (blast_radius is None or self.blast_radius == blast_radius)
                and (affected_nodes is None or sorted(self.affected_nodes) == sorted(affected_nodes)))


INCIDENT = {
    "healthy": "none", "hsm_degraded": "none",
    "kek_mismatch_or_key_loss": "data_loss", "consumed_secret_missing": "data_loss", "backend_degraded": "none",
    "backend_data_lost": "data_loss",
}
MAX_SENTINELS = 4  # per node and diagnosis: enough evidence, bounded time


@dataclass
class Known:
    """What the diagnosis may rely on beyond the API: sentinels and consumed resources the
    harness seeded (a scenario's seed manifest); empty for a cloud we know nothing about."""

    sentinels: list[dict] = field(default_factory=list)  # {role, ref, sha256}
    tls_containers: list[str] = field(default_factory=list)  # read by the service user via ACL
    consumed_secrets: list[dict] = field(default_factory=list)  # {role, ref}

    @classmethod
    def load(cls, path: Path) -> "Known":
        if not path.exists():
            return cls()
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))


class Diagnoser:
    """Keeps log offsets between calls, so each diagnosis reads only what is new."""

    def __init__(self, target, known: Known | None = None, role: str | None = None,
                 logs_dir: Path | None = None, fresh_projects: bool = True, canary_name: str = "triage-canary",
                 since: float | None = None, horizon: float = HORIZON_S, budget: float = BUDGET_S):
        self.target = target
        # On a target the harness does not own, under the run's writes prefix: a canary
        # left by a killed run is then deleted by `heal` with the rest.
        self.canary_name = canary_name
        self.known = known or Known()
        self.role = role or target.writer_role
        self.logs_dir = logs_dir
        # A new project per check needs Keystone's admin (Environment.fresh_project).
        self.fresh_projects = fresh_projects and Capability.KEYSTONE_ADMIN in target.capabilities
        self._fresh_role: str | None = None
        self._offsets: dict[Path, int] = {}
        self._hung: set[str] = set()  # node URLs that timed out in the current probe round
        # The log lines the last diagnosis read, as (node, line) (its behaviour signature keeps them).
        self.last_log_lines: list[tuple[str, str]] = []
        self._tls_refs: list[str] = list(self.known.tls_containers)
        # One-off (since=seconds): the log window; the scenarios' continuous use reads only
        # what is new since the last diagnosis (or since mark_logs at an inject).
        self.since = since
        self.horizon = horizon
        self.budget = budget
        # mark_logs may come from another thread (the scenario's timeline, at an inject).
        self._offsets_lock = threading.Lock()
        if logs_dir and since is None:
            self.mark_logs()

    # -- logs -----------------------------------------------------------------------------
    def mark_logs(self) -> None:
        """From now on, only new log lines count as evidence."""
        with self._offsets_lock:
            for path in self._log_files():
                self._offsets[path] = path.stat().st_size

    def _log_files(self) -> list[Path]:
        if not self.logs_dir:
            return []
        return sorted(p for p in self.logs_dir.glob("*-app.log") if p.is_file())

    def _new_log_lines(self, probes_from: dict[Path, int] | None = None) -> list[LogLine]:
        """Lines since the offsets (continuous use), or the window (one-off use: offsets
        empty); with `probes_from` (file sizes when the probes began) a line before it is
        marked as not written during the probes."""
        out: list[LogLine] = []
        with self._offsets_lock:
            chunks = []
            for path in self._log_files():
                start = self._offsets.get(path, 0)
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read()
                self._offsets[path] = start + len(data)
                chunks.append((path, start, data))
        for path, start, data in chunks:
            node = path.name.removesuffix("-app.log")
            boundary = (probes_from or {}).get(path, 0) - start
            pos = 0
            for raw in data.split(b"\n"):
                if raw:
                    out.append(LogLine.parse(node, raw.decode(errors="replace"), during=pos >= boundary))
                pos += len(raw) + 1
        if self.since is None:
            return out
        return current(out, self._not_before(), self._pid_alive())

    def _not_before(self) -> dt.datetime:
        """The window's start: `since` ago, or the last heal the fault journal records if later."""
        start = dt.datetime.now() - dt.timedelta(seconds=self.since or 0)
        run_dir = getattr(self.target, "run_dir", None)
        if run_dir is not None and (Path(run_dir) / "faults.jsonl").exists():
            from harness.faults.journal import Journal

            healed = [h["time"] for e in Journal(Path(run_dir)).entries().values()
                      for h in e.get("history", []) if h.get("state") == "healed"]
            if healed:
                start = max(start, local_naive(dt.datetime.fromisoformat(max(healed))))
        return start

    def _pid_alive(self):
        """Local processes only: a line from a process that no longer runs was written
        before its node restarted or reloaded (a container's PIDs are not ours to check)."""
        state = getattr(self.target, "state", None)
        if not isinstance(state, dict) or state.get("provider", "local") != "local" or self.logs_dir is None:
            return None
        import psutil

        return psutil.pid_exists

    def _log_sizes(self) -> dict[Path, int]:
        return {path: path.stat().st_size for path in self._log_files()}

    # -- probes ---------------------------------------------------------------------------
    def _req(self, role: str, method: str, url: str, **kw):
        kw.setdefault("timeout", HTTP_TIMEOUT)
        node = url.split("/v1/", 1)[0]
        if node in self._hung:
            return NodeHung(f"not sent: a request to {node} already timed out in this probe round")
        try:
            return self.target.session(role).request(url, method, raise_exc=False, **kw)
        except Exception as exc:  # noqa: BLE001 - connection refused, timeouts: the probe result
            # A node that let one request time out (accepting connections, answering
            # nothing: a hung node) would make every later probe wait out its own timeout.
            keystone = getattr(self.target, "keystone_url", None)
            if keystone and keystone.rstrip("/") in str(exc):
                # keystoneauth fetching a token timed out, not the node: say so.
                return KeystoneUnanswered(f"the token request to Keystone failed before {node} was asked: "
                                          f"{type(exc).__name__}: {str(exc)[:160]}")
            if "Timeout" in type(exc).__name__:
                self._hung.add(node)
            return exc

    @staticmethod
    def _status(r) -> str:
        if isinstance(r, Exception):
            return type(r).__name__
        return str(r.status_code)

    def _canary(self, node, role: str) -> dict:
        url = node.url + "/v1/secrets"
        start = time.monotonic()
        payload = _rand.token_hex(8)
        r = self._req(role, "POST", url, json={"name": self.canary_name, "payload": payload,
                                                "payload_content_type": "text/plain"})
        result = {"store": self._status(r)}
        if not isinstance(r, Exception) and r.status_code == 201:
            ref = node.url + "/v1/" + r.json()["secret_ref"].split("/v1/", 1)[1]
            g = self._req(role, "GET", ref + "/payload", headers={"Accept": "text/plain"})
            result["get"] = self._status(g)
            result["match"] = (not isinstance(g, Exception)) and g.status_code == 200 and g.text == payload
            self._req(role, "DELETE", ref)
        if not isinstance(r, Exception) and r.status_code >= 400:
            result["body"] = _describe(r)
        result["seconds"] = round(time.monotonic() - start, 3)
        return result

    def _sentinels(self, node) -> dict:
        out = {"ok": 0, "failed": []}
        sentinels = (self.known.sentinels or self._listed_sentinels(node))[:MAX_SENTINELS]
        start = time.monotonic()

        def read(s):
            ref = node.url + "/v1/" + s["ref"].split("/v1/", 1)[1]
            return s, self._req(s["role"], "GET", ref + "/payload", timeout=5,
                                headers={"Accept": "application/octet-stream"})

        # In parallel: when the backend hangs, one timeout costs what six would.
        with ThreadPoolExecutor(max_workers=max(1, len(sentinels))) as pool:
            for s, r in pool.map(read, sentinels):
                if not isinstance(r, Exception) and r.status_code == 200:
                    out["ok"] += 1
                else:
                    out["failed"].append({"ref": s["ref"], "status": self._status(r), "body": _describe(r)})
        if sentinels:
            out["seconds"] = round(time.monotonic() - start, 3)
        return out

    def _listed_sentinels(self, node, limit: int = 5) -> list[dict]:
        """Without a seed manifest: existing secrets of the project (read only)."""
        r = self._req(self.role, "GET", node.url + "/v1/secrets", params={"limit": 50})
        if isinstance(r, Exception) or r.status_code != 200:
            return []
        refs = [s["secret_ref"] for s in r.json().get("secrets", [])
                if not (s.get("name") or "").endswith("triage-canary") and s.get("status") == "ACTIVE"]
        return [{"role": self.role, "ref": ref} for ref in refs[:limit]]

    def _reachable(self, node) -> str:
        try:
            requests.get(node.url + "/", timeout=3)
            return "yes"
        except requests.Timeout:
            return "timeout"
        except requests.RequestException:
            return "refused"

    def _token(self):
        """A brand-new token, on a session of its own: the probes' sessions keep their
        tokens, as long-running clients (Nova, Octavia) keep theirs. Returns (status,
        session, the Keystone dependency result)."""
        start = time.monotonic()
        try:
            from harness.identity import session_for

            new = session_for(self.target.keystone_url, self.target.credentials[self.role], timeout=HTTP_TIMEOUT)
            new.get_token()
            return "ok", new, {"status": "ok", "detail": "token issued", "seconds": round(time.monotonic() - start, 3)}
        except Exception as exc:  # noqa: BLE001
            status = "timeout" if "imeout" in type(exc).__name__ else "error"
            return type(exc).__name__, None, {"status": status, "detail": f"{type(exc).__name__}: {str(exc)[:160]}",
                                              "seconds": round(time.monotonic() - start, 3)}

    def _new_token_request(self, node, sess) -> tuple[str, float]:
        """A request with a token this node has never validated (a new client)."""
        start = time.monotonic()
        try:
            r = sess.get(node.url + "/v1/secrets", params={"limit": 1}, raise_exc=False, timeout=HTTP_TIMEOUT)
            status = str(r.status_code)
        except Exception as exc:  # noqa: BLE001
            status = type(exc).__name__
        return status, round(time.monotonic() - start, 3)

    def _tls(self, node) -> list[dict]:
        failed = []
        for cref in self._tls_refs:
            url = node.url + "/v1/" + cref.split("/v1/", 1)[1]
            r = self._req("service", "GET", url)
            if isinstance(r, Exception) or r.status_code != 200:
                failed.append({"ref": cref, "status": self._status(r), "body": _describe(r)})
                continue
            members = {m["name"]: m["secret_ref"] for m in r.json().get("secret_refs", [])}
            if "private_key" not in members or "certificate" not in members:
                failed.append({"ref": cref, "status": "member_missing", "body": f"members: {sorted(members)}"})
                continue
            for name, sref in members.items():
                url = node.url + "/v1/" + sref.split("/v1/", 1)[1] + "/payload"
                p = self._req("service", "GET", url, headers={"Accept": "application/octet-stream"})
                if isinstance(p, Exception) or p.status_code != 200:
                    failed.append({"ref": sref, "status": self._status(p), "body": _describe(p), "member": name})
        return failed

    def _expiry(self, node) -> list[dict]:
        """Consumed secrets that answer 404 (expired or deleted under their consumers)."""
        out = []
        for s in self.known.consumed_secrets:
            url = node.url + "/v1/" + s["ref"].split("/v1/", 1)[1]
            r = self._req(s["role"], "GET", url)
            if not isinstance(r, Exception) and r.status_code == 404:
                out.append({"ref": s["ref"], "status": "404"})
        return out

    def _order(self, node) -> str:
        r = self._req(self.role, "POST", node.url + "/v1/orders", timeout=5,
                      json={"type": "key", "meta": {"name": "triage-order", "algorithm": "aes", "bit_length": 256,
                                                    "mode": "cbc",
                                                    "payload_content_type": "application/octet-stream"}})
        if isinstance(r, Exception):
            return f"post:{type(r).__name__}"
        if r.status_code != 202:
            return f"post:{r.status_code}"
        ref = node.url + "/v1/" + r.json()["order_ref"].split("/v1/", 1)[1]
        deadline = time.monotonic() + 4
        status = "PENDING"
        while time.monotonic() < deadline:
            g = self._req(self.role, "GET", ref)
            if isinstance(g, Exception) or g.status_code != 200:
                return f"get:{self._status(g)}"
            status = g.json().get("status")
            if status != "PENDING":
                break
            time.sleep(0.3)
        return status

    # -- the verdict ----------------------------------------------------------------------
    def diagnose(self, orders: bool = False) -> Verdict:
        started = time.monotonic()
        self._hung = set()
        nodes = list(self.target.nodes)
        probes_from = self._log_sizes() if self.since is not None else None
        probes: dict = {"nodes": {}, "backends": list(getattr(self.target, "backends", []))}
        if self.since is None:
            # Scenarios probe every few seconds and time their verdicts: the dependencies
            # are asked beside the nodes, adding nothing to a round.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="triage-deps") as pool:
                deps_done = pool.submit(probe_dependencies, self.target, self.role, self.budget, light=True)
                self._probe_nodes(nodes, probes, orders)
                probes["dependencies"] = {**deps_done.result(), "keystone": probes.pop("keystone_probe")}
            return self._verdict(probes, started, probes_from)
        # One-off: the shared dependencies first, all at once and each within the budget:
        # when one of them hangs, every request to a node would only wait on it.
        deps = probes["dependencies"] = probe_dependencies(self.target, self.role, self.budget)
        shared_down = [name for name in ("database", "keystone") if deps.get(name, {}).get("status", "ok") != "ok"]
        if shared_down:
            probes["token"] = deps.get("keystone", {}).get("status", "ok")
            # The cause is known: the nodes are asked only whether they answer at all (any
            # authenticated request would wait on the same dependency).
            with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
                for node, reachable in zip(nodes, pool.map(self._reachable, nodes)):
                    probes["nodes"][node.name] = {"reachable": reachable}
        else:
            self._probe_nodes(nodes, probes, orders)
            probes.pop("keystone_probe")  # asked already, with the other dependencies
        return self._verdict(probes, started, probes_from)

    def _verdict(self, probes: dict, started: float, probes_from: dict[Path, int] | None) -> Verdict:
        lines = self._new_log_lines(probes_from)
        self.last_log_lines = [(line.node, line.text) for line in lines]
        verdict = classify(probes, lines)
        verdict.seconds = round(time.monotonic() - started, 3)
        return verdict

    def _probe_nodes(self, nodes: list, probes: dict, orders: bool) -> None:
        token_status, new_session, probes["keystone_probe"] = self._token()
        probes["token"] = token_status
        if self.fresh_projects and self._fresh_role is None:
            try:
                self._fresh_role = self.target.fresh_project()
            except Exception:  # noqa: BLE001 - Keystone may be the thing that is down
                self._fresh_role = None
        if self.since is not None:
            # One-off: the consumed containers the service user reads are found, not only
            # remembered (scenarios probe what they seeded, on a bounded clock).
            try:
                found = discovery.service_containers(self.target, self._readers())
            except Exception:  # noqa: BLE001 - best effort: the probes say what is down
                found = []
            self._tls_refs = list(dict.fromkeys([*self.known.tls_containers, *found]))
            probes["discovered_tls_containers"] = len(found)
        # Discovery runs beside the node probes: what the cloud says is consumed and expiring.
        audit_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triage-discovery")
        audit = audit_pool.submit(discovery.consumed_expiring, self.target, self._readers(), self.horizon)

        def probe(node) -> dict:
            p: dict = {"reachable": self._reachable(node)}
            if p["reachable"] == "yes":
                if new_session is not None:
                    p["new_token"], p["new_token_s"] = self._new_token_request(node, new_session)
                p["canary"] = self._canary(node, self.role)
                # A 503 means Keystone is the problem: a second canary would only wait again.
                if self._fresh_role and p["canary"].get("store") != "503":
                    p["fresh_canary"] = self._canary(node, self._fresh_role)
                p["sentinels"] = self._sentinels(node)
                p["tls"] = self._tls(node)
                p["expiry"] = self._expiry(node)
            return p

        # Nodes are probed side by side: a slow or frozen node must not delay the others.
        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            for node, p in zip(nodes, pool.map(probe, nodes)):
                probes["nodes"][node.name] = p
        if orders and nodes and probes["nodes"][nodes[0].name]["reachable"] == "yes":
            probes["order"] = self._order(nodes[0])
        found, problems = audit.result()
        audit_pool.shutdown(wait=False)
        known = {s["ref"].rstrip("/").rsplit("/", 1)[1] for s in self.known.consumed_secrets}
        probes["expiry_audit"] = {
            "horizon_s": self.horizon, "problems": problems,
            "expired": [f for f in found if f["expired"]],
            "expiring": [f for f in found if not f["expired"]],
            "unseeded": sorted(f["id"] for f in found if f["id"] not in known),
        }
        probes["missing"] = self._why_missing(probes)

    def _readers(self) -> list[str]:
        """The roles whose projects the API discovery lists (the writer's, and the
        seeded other project's when the target has one)."""
        roles = [self.role] + [r for r in ("other-" + self.role,) if r in getattr(self.target, "credentials", {})]
        return list(dict.fromkeys(roles))

    def _why_missing(self, probes: dict) -> dict[str, str]:
        """For secrets that answer 404: expired (row still there) or deleted? An operator
        of a harness environment can ask the database; on a cloud this stays unknown."""
        refs = {f["ref"] for p in probes["nodes"].values() for key in ("sentinels", "tls")
                for f in (p.get(key, {}).get("failed", []) if key == "sentinels" else p.get(key, []))
                if f.get("status") == "404"}
        refs |= {f["ref"] for p in probes["nodes"].values() for f in p.get("expiry", [])}
        if not refs or Capability.DATABASE not in self.target.capabilities:
            return {}
        out = {}
        try:
            with self.target.facet(Capability.DATABASE).connect("barbican", timeout=BUDGET_S) as conn, conn.cursor() as cur:
                for ref in refs:
                    cur.execute("SELECT deleted, expiration < UTC_TIMESTAMP() FROM secrets WHERE id = %s",
                                (ref.rstrip("/").rsplit("/", 1)[1],))
                    row = cur.fetchone()
                    out[ref] = "absent" if row is None else "deleted" if row[0] else "expired" if row[1] else "present"
        except Exception:  # noqa: BLE001 - the database may be what is down
            return {}
        return out


class KeystoneUnanswered(Exception):
    """A probe request not sent: its session could not get a token from Keystone."""


class NodeHung(Exception):
    """A probe request not sent: the node already let one request time out this round."""


def _describe(r) -> str:
    if isinstance(r, Exception):
        return str(r)[:200]
    try:
        return r.json().get("description") or r.text[:200]
    except ValueError:
        return r.text[:200]


def _ok(canary: dict | None) -> bool:
    return bool(canary) and canary.get("store") == "201" and canary.get("match") is True


def _dependency_line(name: str, r: dict) -> str:
    what = "no answer" if r["status"] == "timeout" else "failed"
    return f"probe {name}: {what} after {r['seconds']} s ({r['detail'][:160]})"


def classify(probes: dict, log_lines: list) -> Verdict:
    """Probes + log lines → category, incident type, blast radius, nodes, evidence. Pure:
    decides from what it is given. `log_lines`: LogLine, or (node, line) pairs."""
    nodes = probes["nodes"]
    evidence: list[str] = []
    lines = [as_log_line(item) for item in log_lines]

    # 0. Shared dependencies, asked directly: the root cause names the dependency, and the
    # parts that need it are listed as affected (a frozen database also stops Keystone).
    deps = probes.get("dependencies", {})
    roots, symptoms = root_causes(deps)
    for name in ("database", "keystone"):
        if name not in roots:
            continue
        evidence.append(_dependency_line(name, deps[name]))
        for other in symptoms:
            evidence.append(_dependency_line(other, deps[other]) + f" (needs the {name})")
        for n, p in nodes.items():
            if p.get("reachable", "yes") != "yes":
                evidence.append(f"probe {n}: {p['reachable']} on GET /")
        category = "backend_outage" if name == "database" else "auth_outage"
        affected = sorted(set(dependents(name)) - {"barbican"} | set(symptoms))
        return Verdict(category, "outage", "new_operations_only", sorted(nodes), evidence, probes,
                       root_cause=name, affected_services=affected)

    # Which nodes the probes find failing: a line written before the probes began (a
    # one-off diagnosis reads a window) is evidence only for a node that fails now.
    failing = {n for n, p in nodes.items()
               if p.get("reachable") != "yes" or not _ok(p.get("canary")) or p.get("sentinels", {}).get("failed")}
    lines = [ln for ln in lines if ln.during or ln.node in failing]
    by_category: dict[str, list[LogLine]] = {}
    reinit: list[LogLine] = []
    for line in lines:
        sig = match(line.text)
        if sig:
            by_category.setdefault(sig.category, []).append(line)
        # The HSM failed and Barbican re-initialised (maybe recovered): only a current one
        # says "degraded"; one from before the probes, with the probes fine, is over.
        if REINIT.search(line.text) and line.during:
            reinit.append(line)

    def missing_verdict(affected: list[str]) -> Verdict:
        why = probes.get("missing", {})
        for ref, state in list(why.items())[:3]:
            evidence.append(f"database: {ref} is {state}")
        if "expired" in why.values():
            return verdict("expiration", "existing_secrets_at_risk", affected)
        return verdict("consumed_secret_missing", "existing_secrets_at_risk", affected)

    def verdict(category: str, radius: str, affected: list[str], root_cause: str = "") -> Verdict:
        for line in by_category.get(category, [])[:3]:
            evidence.append(line.evidence())
        return Verdict(category, INCIDENT.get(category, "outage"), radius, sorted(affected), evidence, probes,
                       root_cause=root_cause)

    # 1. Nodes that do not answer at all.
    down = [n for n, p in nodes.items() if p["reachable"] != "yes"]
    up = [n for n in nodes if n not in down]
    for n in down:
        evidence.append(f"probe {n}: {nodes[n]['reachable']} on GET /")

    # 2. Sentinels (existing secrets) and canaries (new operations) per reachable node.
    sentinel_fail = {n: nodes[n]["sentinels"]["failed"] for n in up if nodes[n]["sentinels"]["failed"]}
    canary_fail = {n: nodes[n]["canary"] for n in up if not _ok(nodes[n]["canary"])}
    fresh_ok = {n: _ok(nodes[n].get("fresh_canary")) for n in up if "fresh_canary" in nodes[n]}
    for n, fails in sentinel_fail.items():
        evidence.append(f"probe {n}: {len(fails)} existing secret(s) unreadable, e.g. "
                        f"{fails[0]['status']} {fails[0]['body'][:120]}")
    for n, c in canary_fail.items():
        evidence.append(f"probe {n}: canary store {c.get('store')} get {c.get('get', '-')} {c.get('body', '')[:120]}")

    if probes["token"] != "ok":
        evidence.append(f"probe keystone: token issue failed ({probes['token']})")
        return verdict("auth_outage", "new_operations_only", list(nodes))
    # New tokens cannot be validated (Keystone unreachable from Barbican): the fresh
    # project's canary gets 503 even where clients with cached tokens still work.
    auth_503 = sorted({n for n in up for key in ("canary", "fresh_canary")
                       if (nodes[n].get(key) or {}).get("store") == "503"}
                      | {n for n in up if nodes[n].get("new_token") == "503"})
    if auth_503:
        for n in auth_503:
            evidence.append(f"probe {n}: a new token gets 503 (Keystone unreachable for token validation)")
        return verdict("auth_outage", "new_operations_only", sorted(set(auth_503)))

    broken = sorted(set(sentinel_fail) | set(canary_fail))
    if broken:
        for category in ("kek_mismatch_or_key_loss", "backend_data_lost"):
            if by_category.get(category):
                return verdict(category, "existing_secrets_at_risk", broken)
        if by_category.get("hsm_unreachable"):
            return verdict("hsm_unreachable", "new_operations_only", broken)
        hsm = deps.get("hsm")
        if hsm and hsm["status"] != "ok":  # the token asked directly, not through Barbican
            evidence.append(_dependency_line("hsm", hsm))
            if "HsmKeyMissing" in hsm["detail"]:
                return verdict("kek_mismatch_or_key_loss", "existing_secrets_at_risk", broken, root_cause="hsm")
            return verdict("hsm_unreachable", "new_operations_only", broken, root_cause="hsm")
        if by_category.get("backend_access_denied"):
            return verdict("backend_access_denied", "new_operations_only", broken)
        if by_category.get("backend_outage"):
            return verdict("backend_outage", "new_operations_only", broken)
        if any(f["status"] == "404" for fails in sentinel_fail.values() for f in fails):
            return missing_verdict(broken)
        # No logs (an existing cloud): a fresh project working where existing ones get 500
        # is the per-project KEK signature of lost or mismatched key material.
        http_500 = all(f["status"] == "500" for fails in sentinel_fail.values() for f in fails)
        if sentinel_fail and http_500 and fresh_ok and all(fresh_ok.get(n) for n in sentinel_fail):
            evidence.append("probe: fresh projects work where existing projects fail (per-project KEK)")
            return verdict("kek_mismatch_or_key_loss", "existing_secrets_at_risk", broken)
        return verdict("backend_outage", "new_operations_only", broken)

    if down:
        return verdict("node_down", "new_operations_only", down)

    # 3. Consumers: the service user's TLS containers, consumed secrets.
    tls = {n: nodes[n]["tls"] for n in up if nodes[n]["tls"]}
    if tls:
        first = next(iter(tls.values()))[0]
        evidence.append(f"probe service user: {first['status']} on {first['ref']} ({first['body'][:120]})")
        statuses = {f["status"] for fails in tls.values() for f in fails}
        if statuses & {"403"}:
            return verdict("acl_permission", "new_operations_only", sorted(tls))
        return missing_verdict(sorted(tls))
    expired = {n: nodes[n]["expiry"] for n in up if nodes[n]["expiry"]}
    if expired:
        evidence.append(f"probe expiry audit: consumed secret answers 404: {next(iter(expired.values()))[0]['ref']}")
        return missing_verdict(sorted(expired))
    audit = probes.get("expiry_audit") or {}
    if audit.get("expired"):
        # Found by discovery (any consumer, seeded or not): expired in the shared database,
        # so every node answers 404 for it.
        first = audit["expired"][0]
        evidence.append(f"probe expiry audit: consumed secret {first['id']} expired at {first['expiration']} "
                        f"(found in the {first['source']}; {len(audit['expired'])} expired in all)")
        return verdict("expiration", "existing_secrets_at_risk", up)

    # 4. Orders, then slowness.
    order = probes.get("order")
    if order and order != "ACTIVE":
        evidence.append(f"probe order: {order} after 4 s")
        return verdict("orders_stalled", "new_operations_only", [])
    slow = [n for n in up if nodes[n]["canary"].get("seconds", 0) > SLOW_PAIR_S]
    slow_auth = [n for n in up if nodes[n].get("new_token_s", 0) > SLOW_PAIR_S]
    if slow_auth and not slow and not reinit:
        for n in slow_auth:
            evidence.append(f"probe {n}: a new token took {nodes[n]['new_token_s']} s to be accepted "
                            "(token validation against Keystone is slow)")
        return verdict("backend_degraded", "none", slow_auth)
    if slow or reinit:
        for n in slow:
            evidence.append(f"probe {n}: canary store+get took {nodes[n]['canary']['seconds']} s")
        for line in reinit[:3]:
            evidence.append(line.evidence())
        # Slow crypto with an HSM behind it, or an HSM that re-initialised and recovered.
        hsm = "pkcs11" in probes.get("backends", []) or reinit
        return verdict("hsm_degraded" if hsm else "backend_degraded", "none",
                       sorted(set(slow) | {line.node for line in reinit}))
    for item in audit.get("expiring", [])[:3]:  # not an incident yet: a warning with the verdict
        evidence.append(f"probe expiry audit: consumed secret {item['id']} expires at {item['expiration']} "
                        f"(within {audit.get('horizon_s', 0) / 3600:g} h; found in the {item['source']})")
    return verdict("healthy", "none", [])


def diagnose(target, **kw) -> Verdict:
    return Diagnoser(target, **kw).diagnose()
