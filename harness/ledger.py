"""The integrity ledger: every acknowledged create and delete, and a checker that proves
after a fault (and its heal) that nothing was lost, corrupted, resurrected or invented.

What is recorded per write: the secret ref, the sha256 of the payload (never the payload),
its unique name, the role and node it went through, the time, and the outcome:
  ok       the API acknowledged it (201 / 204)
  failed   the API refused it (4xx / 5xx): it must not exist
  unknown  timeout or connection reset: it may or may not exist
Writers in several processes (Locust workers) each append to their own JSONL file in
the ledger directory; the checker folds them together.

Checker rules (Jepsen's set semantics, applied to secrets):
  acknowledged creates  must read back byte-identical            else lost / corrupted
  unknown creates       may be missing; if present must match     else corrupted
  failed creates        must not exist                            else unexpected
  acknowledged deletes  must stay deleted                         else resurrected
  anything under the ledger's name prefix that nobody wrote       → unexpected
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets as _rand
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

OUTCOMES = ("ok", "failed", "unknown")


def sha256(payload: bytes | str) -> str:
    if isinstance(payload, str):
        payload = payload.encode()
    return hashlib.sha256(payload).hexdigest()


@dataclass
class Entry:
    op: str  # create | delete
    name: str
    role: str
    node: str
    outcome: str
    ref: str | None = None
    sha256: str | None = None
    secret_type: str | None = None
    time: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat())
    error: str | None = None
    tags: list[str] = field(default_factory=list)


class Ledger:
    """Append-only record of writes, one JSONL file per process in `directory`."""

    def __init__(self, directory: str | Path, prefix: str | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = self.directory / "ledger-meta.json"
        if prefix is None and meta.exists():
            prefix = json.loads(meta.read_text())["prefix"]
        self.prefix = prefix or f"ledger-{_rand.token_hex(4)}"
        if not meta.exists():
            meta.write_text(json.dumps({"prefix": self.prefix}))
        self._lock = threading.Lock()

    def _file(self) -> Path:
        return self.directory / f"{os.getpid()}.jsonl"

    def new_name(self, kind: str = "secret") -> str:
        return f"{self.prefix}-{kind}-{_rand.token_hex(6)}"

    def record(self, entry: Entry) -> None:
        if entry.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {entry.outcome!r}")
        line = json.dumps(asdict(entry)) + "\n"
        with self._lock, open(self._file(), "a") as f:
            f.write(line)

    def created(self, name: str, payload: bytes | str, role: str, node: str, outcome: str,
                ref: str | None = None, error: str | None = None, secret_type: str | None = None,
                tags: Iterable[str] = ()) -> None:
        self.record(Entry("create", name, role, node, outcome, ref=ref, sha256=sha256(payload),
                          secret_type=secret_type, error=error, tags=list(tags)))

    def deleted(self, name: str, ref: str, role: str, node: str, outcome: str, error: str | None = None) -> None:
        self.record(Entry("delete", name, role, node, outcome, ref=ref, error=error))

    def entries(self) -> list[Entry]:
        out = []
        for path in sorted(self.directory.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    out.append(Entry(**json.loads(line)))
        return sorted(out, key=lambda e: e.time)

    def store(self, client, role: str, node: str, payload: bytes, name: str | None = None,
              tags: Iterable[str] = (), **kwargs) -> str | None:
        """Create a secret through a barbicanclient Client and record the outcome."""
        name = name or self.new_name()
        try:
            ref = client.secrets.create(name=name, payload=payload, **kwargs).store()
        except Exception as exc:  # noqa: BLE001 - classified into the ledger's outcomes
            self.created(name, payload, role, node, classify(exc), error=_short(exc), tags=tags,
                         secret_type=kwargs.get("secret_type"))
            return None
        self.created(name, payload, role, node, "ok", ref=ref, tags=tags, secret_type=kwargs.get("secret_type"))
        return ref


def classify(exc: BaseException) -> str:
    """An HTTP answer is a definite failure; a timeout or broken connection is unknown."""
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:
        return "failed"
    # A refused connection never reached Barbican: nothing was applied.
    if isinstance(exc, ConnectionRefusedError) or "connection refused" in str(exc).lower():
        return "failed"
    return "unknown"  # timeouts, resets, closed connections: it may or may not have happened


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


@dataclass
class LedgerResult:
    acknowledged: int = 0
    verified: int = 0
    lost: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    unknown_present: int = 0
    unknown_missing: int = 0
    deletes_verified: int = 0
    resurrected: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # ref → why (status, error)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.corrupted or self.resurrected or self.unexpected)

    def summary(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


class LedgerChecker:
    """Reads everything back through a target (Environment or CloudTarget) after heal."""

    def __init__(self, ledger: Ledger, target, node: str | None = None):
        self.ledger = ledger
        self.target = target
        self.node = node

    def _read(self, role: str, ref: str) -> tuple[int, bytes | None]:
        sess = self.target.session(role)
        r = sess.get(ref + "/payload", raise_exc=False, timeout=15, headers={"Accept": "application/octet-stream"})
        return r.status_code, (r.content if r.status_code == 200 else None)

    def _names_in_projects(self, roles: set[str]) -> dict[str, str]:
        """name → ref of every secret under the ledger prefix, in the ledger's projects."""
        found: dict[str, str] = {}
        seen_projects = set()
        for role in sorted(roles):
            sess = self.target.session(role)
            project = sess.get_project_id()
            if project in seen_projects:
                continue
            seen_projects.add(project)
            url = self.target.node(self.node).url + "/v1/secrets"
            offset = 0
            while True:
                r = sess.get(url, params={"limit": 100, "offset": offset}, raise_exc=False, timeout=15)
                if r.status_code != 200:
                    break
                body = r.json()
                for s in body.get("secrets", []):
                    if (s.get("name") or "").startswith(self.ledger.prefix + "-"):
                        found[s["name"]] = s["secret_ref"]
                offset += 100
                if offset >= body.get("total", 0):
                    break
        return found

    def check(self) -> LedgerResult:
        result = LedgerResult()
        entries = self.ledger.entries()
        creates = {e.name: e for e in entries if e.op == "create"}
        deletes = {e.name: e for e in entries if e.op == "delete" and e.outcome == "ok"}
        # A delete that got no answer may have happened: its secret may be absent.
        maybe_deleted = {e.name for e in entries if e.op == "delete" and e.outcome == "unknown"}
        listed = self._names_in_projects({e.role for e in entries})
        for name, e in creates.items():
            ref = e.ref or listed.get(name)
            if name in deletes:
                status, _ = self._read(e.role, deletes[name].ref) if deletes[name].ref else (404, None)
                if status == 404:
                    result.deletes_verified += 1
                else:
                    result.resurrected.append(deletes[name].ref)
                continue
            if e.outcome == "ok":
                result.acknowledged += 1
                status, body = self._read(e.role, ref)
                if status == 404 and name in maybe_deleted:
                    result.deletes_verified += 1
                elif status != 200:
                    result.lost.append(ref)
                    result.unreadable[ref] = f"HTTP {status}"
                elif sha256(body) != e.sha256:
                    result.corrupted.append(ref)
                else:
                    result.verified += 1
            elif e.outcome == "unknown":
                if ref is None:
                    result.unknown_missing += 1
                    continue
                status, body = self._read(e.role, ref)
                if status == 200 and sha256(body) != e.sha256:
                    result.corrupted.append(ref)
                elif status == 200:
                    result.unknown_present += 1
                else:
                    result.unknown_missing += 1
            elif e.outcome == "failed" and name in listed:
                result.unexpected.append(listed[name])
        result.unexpected += [ref for name, ref in listed.items() if name not in creates]
        return result
