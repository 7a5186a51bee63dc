"""What Barbican's database and logs say during a gate: which crypto plugin holds each
secret, the schema revision, and the exceptions the nodes logged (the cause behind a 500)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path


def _query(env, sql: str) -> list[tuple]:
    """Rows of a query on Barbican's database (sqlite file or the provider's server)."""
    if env.ctx.topology.database == "sqlite":
        import sqlite3

        with contextlib.closing(sqlite3.connect(env.run_dir / "sqlite" / "barbican.db")) as conn:
            return conn.execute(sql).fetchall()
    with env.provider.database.connect("barbican") as conn, conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def secret_plugins(env) -> dict[str, str]:
    """secret id → the crypto plugin class that holds it (kek_data.plugin_name); {} when
    the database cannot be read."""
    try:
        rows = _query(env, "SELECT s.id, k.plugin_name FROM secrets s JOIN encrypted_data e ON e.secret_id = s.id "
                           "JOIN kek_data k ON k.id = e.kek_id WHERE s.deleted = 0")
    except Exception:  # noqa: BLE001 - a missing fact, not a failure
        return {}
    return {str(sid): plugin for sid, plugin in rows}


def alembic_revision(env) -> str | None:
    try:
        return ",".join(r[0] for r in _query(env, "SELECT version_num FROM alembic_version"))
    except Exception:  # noqa: BLE001 - a missing fact
        return None


def last_server_error(env_or_logs) -> str:
    """The last ERROR line of the Barbican nodes' logs (the cause behind a 500)."""
    logs = env_or_logs if isinstance(env_or_logs, Path) else env_or_logs.ctx.logs_dir
    last = ("", "")
    for log in sorted(logs.glob("barbican-*-app.log")):
        for line in log.read_text(errors="replace").splitlines():
            if " ERROR " in line and ("Exception" in line or "Error" in line) and ": " in line:
                stamp = line[:23]
                if stamp >= last[0]:
                    last = (stamp, line)
    if not last[1]:
        return "none logged"
    return re.sub(r"^\S+ \S+ \d+ ERROR \S+ ", "", re.sub(r"\[[^\]]*\] ", "", last[1]))[:300]


_EXC_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.\d+ \d+ ERROR \S+ "
                       r"((?:[A-Za-z_]\w*\.)*\w*(?:Error|Exception|NotFound|InvalidToken)\b(?::.*)?)$")


def server_errors_since(logs: Path, since: str) -> dict[str, int]:
    """Distinct exceptions ('ValueError: SimpleCrypto KEK is undefined') in the Barbican
    nodes' logs from `since` on, in order of first appearance, with their counts."""
    seen: dict[str, int] = {}
    for log in sorted(logs.glob("barbican-*-app.log")):
        for line in log.read_text(errors="replace").splitlines():
            m = _EXC_LINE.match(line)
            if m and m.group(1) >= since:
                key = m.group(2).strip()[:200]
                seen[key] = seen.get(key, 0) + 1
    return dict(list(seen.items())[:8])
