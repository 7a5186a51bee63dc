"""Helpers for the fault tests: seeded secrets and the steady-state check."""

from __future__ import annotations

import secrets as _rand
from dataclasses import dataclass


@dataclass
class Seeded:
    role: str
    ref: str
    payload: bytes
    node: str


def seed(env, per_node: int = 1) -> list[Seeded]:
    """Secrets in both projects, written through every node."""
    out = []
    writers = [env.writer_role, "other-" + env.writer_role]
    for node in env.nodes:
        for role in writers:
            for _ in range(per_node):
                payload = _rand.token_bytes(24)
                ref = env.barbican(role=role, node=node.name).secrets.create(
                    name="steady", payload=payload).store()
                out.append(Seeded(role, ref, payload, node.name))
    return out


def steady_state(env, seeded: list[Seeded]) -> None:
    """Every seeded secret reads back byte-identical through every node, and every node
    can store and read a new secret."""
    for s in seeded:
        for node in env.nodes:
            got = env.barbican(role=s.role, node=node.name).secrets.get(s.ref).payload
            assert got == s.payload, f"{s.ref} differs when read through {node.name}"
    for node in env.nodes:
        client = env.barbican(node=node.name)
        ref = client.secrets.create(name="steady-new", payload=b"new").store()
        assert client.secrets.get(ref).payload == b"new"


def purge_project(env, role: str) -> None:
    """Remove a project's secrets and project KEK from Barbican's database: test cleanup
    for a project whose pKEK a fault wrapped with a key that no longer exists."""
    project = env.session(role).get_project_id()
    with env.provider.database.connect("barbican") as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM projects WHERE external_id = %s", (project,))
        row = cur.fetchone()
        if row:
            cur.execute("DELETE e FROM encrypted_data e JOIN secrets s ON s.id = e.secret_id "
                        "WHERE s.project_id = %s", (row[0],))
            cur.execute("UPDATE secrets SET deleted = 1, status = 'DELETED', deleted_at = UTC_TIMESTAMP() "
                        "WHERE project_id = %s", (row[0],))
            cur.execute("DELETE FROM kek_data WHERE project_id = %s", (row[0],))
        conn.commit()


def raw(env, method: str, url: str, role: str | None = None, **kw):
    """One HTTP request (status and body are what the tests assert), 15 s timeout."""
    kw.setdefault("timeout", 15)
    return env.session(role).request(url, method, raise_exc=False, **kw)


def on_node(env, ref: str, node: str) -> str:
    """The same resource href, addressed to another node."""
    return env.node(node).url + "/v1/" + ref.split("/v1/", 1)[1]


def log_of(env, service: str) -> str:
    return (env.run_dir / "logs" / f"{service}-app.log").read_text(errors="replace")


def payload_status(env, ref: str, node: str, role: str | None = None):
    return raw(env, "GET", on_node(env, ref, node) + "/payload", role,
               headers={"Accept": "application/octet-stream"})
