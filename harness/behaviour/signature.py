"""A behaviour signature: what one scenario run saw, probe round by probe round.

The runner feeds it every diagnosis (the baseline before the fault, each probe round while
a fault is in effect, each settle round after heal) and writes behaviour.json into the run
directory:

    {"scenario": "db-down", "build": "23.0.0", "rounds": [
        {"phase": "during", "t": 3.1, "nodes": {"barbican-1": {"store": {"status": "500",
          "answered": true, "message": "...", "seconds": 0.41, "latency": "<0.5s"}, ...}},
         "global": {"keystone_token": {...}}, "logs": {"barbican-1": ["the database ..."]}}],
     "recovery": {"first_good_s": 1.2, "restart_needed": false, "healthy": true}}

Phases: `before` (the baseline round), `during` (a fault in effect), `delayed` (a fault in
effect for the scenario's `delayed_phase_s` or longer: a cache expired), `transition` (the
`transition_s` before it, where the delayed phase may already have begun), `healing` (the
heal began before the round ended: nodes restarting one by one), `after` (settle rounds
after heal). Which node is down in which healing or transition round is timing, so diffs
leave those two phases out.

Operations per node: `reach` (GET /), `new_token` (a request with a token the node never
saw), `store` / `get` (a canary in an existing project), `fresh_store` / `fresh_get` (in a
project new to Barbican), `read_existing` (seeded secrets' payloads), `service_read` (the
service user's TLS containers through their ACL), `consumed` (whether consumed secrets
answer 404: `404` or `not-404`). An operation a round did not send (the node did not answer GET /) is `not_sent`.
Messages are normalised (no hrefs, UUIDs, hex, numbers, timestamps), so that two runs of
one build say the same thing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from harness import redact
from harness.triage.signatures import REINIT, match

FILE = "behaviour.json"
FORMAT = 1
PHASES = ("before", "during", "delayed", "after")  # compared; "transition" and "healing" rounds are kept, not compared
RECORDED_PHASES = ("before", "during", "transition", "delayed", "healing", "after")
LATENCY_BUCKETS = ((0.5, "<0.5s"), (2.0, "0.5-2s"), (8.0, "2-8s"))  # else ">=8s"
NOT_SENT = "not_sent"

_URL = re.compile(r"https?://\S+")
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I)
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ][\d:.]+(Z|[+-]\d{2}:?\d{2})?")
_HEX = re.compile(r"\b(0x)?[0-9a-f]{12,}\b", re.I)
_NUMBER = re.compile(r"\b\d+(\.\d+)?\b")
_SPACE = re.compile(r"\s+")


def normalise(message: str | None) -> str:
    """An error message without what changes from run to run (refs, ids, times, ports)."""
    if not message:
        return ""
    text = _URL.sub("<url>", str(message))
    text = _TIME.sub("<time>", text)
    text = _UUID.sub("<id>", text)
    text = _HEX.sub("<hex>", text)
    text = _NUMBER.sub("<n>", text)
    return _SPACE.sub(" ", text).strip()[:160]


def latency_bucket(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    for limit, name in LATENCY_BUCKETS:
        if seconds < limit:
            return name
    return ">=8s"


def status_of(raw: str | None) -> tuple[str, bool]:
    """(status, answered): an HTTP status as is; a failed request as `timeout` or `refused`
    (the client got no answer at all); anything else as `error:<Name>`."""
    if raw is None:
        return NOT_SENT, False
    raw = str(raw)
    if raw.isdigit():
        return raw, True
    if "Timeout" in raw or raw in ("NodeHung", "timeout"):
        return "timeout", False
    if raw in ("refused", "ConnectFailure", "ConnectionError") or "Connect" in raw:
        return "refused", False
    return f"error:{raw}", False


def _op(raw: str | None, message: str | None = None, seconds: float | None = None) -> dict:
    status, answered = status_of(raw)
    out = {"status": status, "answered": answered}
    if message and status != "200" and status != "201":
        out["message"] = normalise(message)
    if seconds is not None:
        out["seconds"] = round(float(seconds), 3)
        out["latency"] = latency_bucket(seconds)
    return out


def _statuses(failed: list[dict], ok: int, ok_status: str = "200") -> tuple[str, str | None]:
    """Several reads in one operation: the distinct statuses, joined ("200|500")."""
    seen = {status_of(f.get("status"))[0] for f in failed}
    if ok:
        seen.add(ok_status)
    message = next((f.get("body") for f in failed if f.get("body")), None)
    return "|".join(sorted(seen)) or ok_status, message


def node_ops(p: dict) -> dict[str, dict]:
    """One node's probe results (harness.triage.diagnose) as operations."""
    reach = p.get("reachable")
    ops: dict[str, dict] = {"reach": {"status": "200" if reach == "yes" else status_of(reach)[0],
                                      "answered": reach == "yes"}}
    names = ("new_token", "store", "get", "fresh_store", "fresh_get", "read_existing", "service_read", "consumed")
    if reach != "yes":
        return {**ops, **{n: {"status": NOT_SENT, "answered": False} for n in names}}
    ops["new_token"] = _op(p.get("new_token"), seconds=p.get("new_token_s")) if "new_token" in p else \
        {"status": NOT_SENT, "answered": False}
    for prefix, key in (("", "canary"), ("fresh_", "fresh_canary")):
        c = p.get(key)
        if c is None:
            ops[prefix + "store"] = ops[prefix + "get"] = {"status": NOT_SENT, "answered": False}
            continue
        ops[prefix + "store"] = _op(c.get("store"), c.get("body"), c.get("seconds"))
        get = _op(c.get("get"))
        if get["status"] == "200" and c.get("match") is False:
            get["status"] = "200-other-bytes"  # answered, but not what was stored
        ops[prefix + "get"] = get
    s = p.get("sentinels") or {}
    status, message = _statuses(s.get("failed", []), s.get("ok", 0))
    ops["read_existing"] = {"status": status, "answered": all(status_of(x)[1] for x in status.split("|")),
                            **({"message": normalise(message)} if message else {}),
                            **({"seconds": s["seconds"], "latency": latency_bucket(s["seconds"])}
                               if s.get("seconds") is not None else {})}
    status, message = _statuses(p.get("tls", []), 0 if p.get("tls") else 1)
    ops["service_read"] = {"status": status, "answered": all(status_of(x)[1] for x in status.split("|")),
                           **({"message": normalise(message)} if message else {})}
    # The expiry audit records 404s only: anything else is "not-404" (it may be an error).
    ops["consumed"] = {"status": "404" if p.get("expiry") else "not-404", "answered": True}
    return ops


def log_signatures(lines: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Per node, the meanings of the log signatures its new lines match (what an operator greps)."""
    out: dict[str, set[str]] = {}
    for node, line in lines:
        sig = match(line)
        if sig:
            out.setdefault(node, set()).add(sig.meaning)
        if REINIT.search(line):
            out.setdefault(node, set()).add("the PKCS#11 library was re-initialised")
    return {n: sorted(v) for n, v in sorted(out.items())}


class Recorder:
    """Collects the rounds of one scenario run; `write` puts them in the run directory."""

    def __init__(self, scenario: str, build: str | None = None):
        self.data: dict = {"format": FORMAT, "scenario": scenario, "build": build, "rounds": [],
                           "recovery": None}

    def round(self, phase: str, t: float, verdict, log_lines: list[tuple[str, str]] | None = None) -> None:
        probes = getattr(verdict, "probes", None) or {}
        nodes = {name: node_ops(p) for name, p in sorted((probes.get("nodes") or {}).items())}
        glob = {"keystone_token": {"status": "200" if probes.get("token") == "ok" else
                                   status_of(probes.get("token"))[0], "answered": probes.get("token") == "ok"}}
        if "order" in probes:
            glob["order"] = {"status": str(probes["order"]), "answered": True}
        self.data["rounds"].append({"phase": phase, "t": round(t, 2), "category": verdict.category,
                                    "nodes": nodes, "global": glob, "logs": log_signatures(log_lines or [])})

    def recovery(self, first_good_s: float | None, restart_needed: bool, healthy: bool) -> None:
        self.data["recovery"] = {"first_good_s": None if first_good_s is None else round(first_good_s, 2),
                                 "restart_needed": restart_needed, "healthy": healthy}

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / FILE
        path.write_text(redact.mask(json.dumps(self.data, indent=1)))
        return path


def load(path: Path) -> dict:
    """A behaviour.json (or the run directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: behaviour format {data.get('format')}, this harness reads {FORMAT}")
    data["path"] = str(path)
    return data
