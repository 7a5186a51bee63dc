"""What the harness wrote on a target it does not own, and its clean-up.

On an existing cloud or deployment every secret and container the harness creates
(scenario seed data, load fixtures and traffic) is named under one prefix that carries
the run's id (`bh-<time>-<hex>-...`). The prefix is recorded in the target's state
directory (writes.jsonl) *before* the first write, so the clean-up finds everything:
at the end of the command, or later from `heal` after a crash. Clean-up lists each
role's project and deletes what carries an open prefix (containers first, then
secrets; orders too when the prefix says so), restores a project quota recorded under
the prefix (recorded before it was changed), then marks the prefix closed.

Harness environments do not need this: `down` removes all their data.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets as _rand
from pathlib import Path

from harness.identity import HTTP_TIMEOUT

FILE = "writes.jsonl"


def new_prefix() -> str:
    return f"bh-{dt.datetime.now().strftime('%Y%m%d%H%M%S')}-{_rand.token_hex(3)}"


class Writes:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / FILE

    def _append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({**record, "time": dt.datetime.now(dt.timezone.utc).isoformat()}) + "\n")

    def open(self, prefix: str, roles: list[str], what: str, kinds: tuple[str, ...] = ("containers", "secrets")) -> None:
        """Before the first write. With orders in `kinds`, give roles that may delete orders
        (the project's admin under the legacy policy)."""
        self._append({"prefix": prefix, "roles": sorted(set(roles)), "what": what, "state": "open",
                      "kinds": list(kinds)})

    def quota(self, prefix: str, project: str, role: str, original: dict | None) -> None:
        """Before a project's quotas are changed: the clean-up restores `original` (None: none set)."""
        self._append({"prefix": prefix, "quota": {"project": project, "role": role, "original": original}})

    def quota_restored(self, prefix: str) -> None:
        self._append({"prefix": prefix, "quota": None})

    def close(self, prefix: str, removed: dict) -> None:
        self._append({"prefix": prefix, "state": "cleaned", "removed": removed})

    def open_records(self) -> dict[str, dict]:
        """prefix -> its record (roles, kinds, quota), for every prefix not cleaned yet."""
        state: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    state.setdefault(rec["prefix"], {}).update(rec)
        return {p: r for p, r in state.items() if r.get("state") == "open"}

    def open_prefixes(self) -> dict[str, list[str]]:
        """prefix -> roles, for every prefix not cleaned yet."""
        return {p: r.get("roles", []) for p, r in self.open_records().items()}

    def prefixes(self) -> set[str]:
        """Every prefix ever opened here (what counts as the harness's own resources)."""
        if not self.path.exists():
            return set()
        return {json.loads(line)["prefix"] for line in self.path.read_text().splitlines() if line.strip()}


def _listed(target, role: str, kind: str, prefix: str) -> list[str]:
    sess = target.session(role)
    url, out, offset = f"{target.node().url}/v1/{kind}", [], 0
    while True:
        r = sess.get(url, params={"limit": 100, "offset": offset}, raise_exc=False, timeout=HTTP_TIMEOUT)
        if r.status_code != 200:
            return out
        body = r.json()
        # `in`, not startswith: an order's key is named "order-<prefix>-..." (load/locustfile.py).
        out += [item[f"{kind[:-1]}_ref"] for item in body.get(kind, [])
                if prefix in (item.get("name") or (item.get("meta") or {}).get("name") or "")]
        offset += 100
        if offset >= body.get("total", 0):
            return out


def clean_up(target, prefix: str, roles: list[str],
             kinds: tuple[str, ...] = ("containers", "secrets")) -> dict[str, int]:
    """Delete every container and secret (and order, if in `kinds`) named under `prefix` in
    the roles' projects."""
    removed = {kind: 0 for kind in kinds} | {"failed": 0}
    seen_projects = set()
    for role in roles:
        if role not in target.roles:
            continue
        sess = target.session(role)
        project = sess.get_project_id()
        if project in seen_projects:
            continue
        seen_projects.add(project)
        for kind in kinds:  # containers first: a container holds references to secrets
            for ref in _listed(target, role, kind, prefix):
                r = sess.delete(ref, raise_exc=False, timeout=HTTP_TIMEOUT)
                if r.status_code in (204, 404):
                    removed[kind] += 1
                else:
                    removed["failed"] += 1
    return removed


def restore_quota(target, project: str, role: str, original: dict | None) -> str | None:
    """Put a project's quotas back as they were (None: no project quota); None, or the problem."""
    sess, path = target.session(role), f"{target.node().url}/v1/project-quotas/{project}"
    r = sess.delete(path, raise_exc=False, timeout=HTTP_TIMEOUT)
    if r.status_code not in (204, 404):
        return f"quota of project {project}: DELETE answered {r.status_code}"
    kept = {k: v for k, v in (original or {}).items() if v is not None}
    if kept:
        r = sess.put(path, json={"project_quotas": kept}, raise_exc=False, timeout=HTTP_TIMEOUT)
        if r.status_code != 204:
            return f"quota of project {project}: restoring {kept} answered {r.status_code}"
    return None


def clean_up_recorded(target, writes: Writes, prefix: str) -> dict[str, int]:
    """Undo what one open prefix wrote (its quota, then its resources); closed when all went."""
    rec = writes.open_records().get(prefix)
    if rec is None:
        return {}
    quota_failed = bool(rec.get("quota") and restore_quota(target, **rec["quota"]))
    if rec.get("quota") and not quota_failed:
        writes.quota_restored(prefix)
    done = clean_up(target, prefix, rec.get("roles", []), tuple(rec.get("kinds", ("containers", "secrets"))))
    done["failed"] += quota_failed
    if not done["failed"]:
        writes.close(prefix, done)
    return done


def clean_up_all(target) -> dict[str, dict]:
    """Everything a crashed command left: every open prefix of the target."""
    writes = Writes(target.run_dir)
    return {prefix: clean_up_recorded(target, writes, prefix) for prefix in writes.open_records()}
