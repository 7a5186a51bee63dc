"""Incidents in Barbican's own data: ACLs, expirations, deleted members and consumers.

These change what a real operator or tenant changes (through the API), except where only
time would (expiry): there the database row is moved, as the clock would move it."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from harness.faults.base import Fault, FaultError, Params
from harness.target import Capability

DATABASE = Capability.DATABASE


def _uuid(ref: str) -> str:
    return ref.rstrip("/").rsplit("/", 1)[1]


def _db(env):
    return env.facet(DATABASE).connect("barbican")


class AclParams(Params):
    ref: str  # a secret or container href
    user_role: str = "service"  # whose read access goes away


class AclRemoval(Fault):
    """ACL removed for a service user: e.g. Octavia's user loses read on a TLS container
    or secret and gets 403 "... attempt not allowed", so its listener fails to build."""

    name = "acl_removal"
    Params = AclParams

    def _url(self, env) -> str:
        return self.params.ref.rstrip("/") + "/acl"

    def prepare(self, env) -> dict[str, Any]:
        r = env.session().get(self._url(env), raise_exc=False)
        if r.status_code != 200:
            raise FaultError(f"cannot read the ACL of {self.params.ref}: HTTP {r.status_code}")
        user_id = env.session(self.params.user_role).get_user_id()
        return {"acl": r.json(), "user_id": user_id}

    def inject(self, env, undo: dict[str, Any]) -> None:
        read = dict(undo["acl"].get("read", {}))
        users = [u for u in read.get("users", []) if u != undo["user_id"]]
        body = {"read": {"users": users, "project-access": read.get("project-access", True)}}
        r = env.session().put(self._url(env), json=body, raise_exc=False)
        if r.status_code != 200:
            raise FaultError(f"ACL update refused: HTTP {r.status_code} {r.text[:200]}")

    def heal(self, env, undo: dict[str, Any]) -> None:
        read = undo["acl"].get("read", {})
        body = {"read": {"users": read.get("users", []), "project-access": read.get("project-access", True)}}
        r = env.session().put(self._url(env), json=body, raise_exc=False)
        if r.status_code != 200:
            raise FaultError(f"ACL restore refused: HTTP {r.status_code} {r.text[:200]}")


class RefParams(Params):
    ref: str


class SecretExpiry(Fault):
    """Secret expired under a consumer: its expiration passes. Barbican answers 404
    "Secret not found." (metadata, payload, list) while the row stays in the database,
    so LB listeners or volumes using it fail on their next fetch."""

    name = "secret_expiry"
    Params = RefParams
    # Only time would move an expiration into the past: the row is moved instead.
    capabilities = frozenset({Capability.API, DATABASE})

    def prepare(self, env) -> dict[str, Any]:
        with _db(env) as conn, conn.cursor() as cur:
            cur.execute("SELECT expiration FROM secrets WHERE id = %s", (_uuid(self.params.ref),))
            row = cur.fetchone()
        if row is None:
            raise FaultError(f"no secret {self.params.ref}")
        return {"expiration": row[0].isoformat() if row[0] else None}

    def inject(self, env, undo: dict[str, Any]) -> None:
        past = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=5)
        with _db(env) as conn, conn.cursor() as cur:
            cur.execute("UPDATE secrets SET expiration = %s WHERE id = %s", (past, _uuid(self.params.ref)))
            conn.commit()

    def heal(self, env, undo: dict[str, Any]) -> None:
        with _db(env) as conn, conn.cursor() as cur:
            cur.execute("UPDATE secrets SET expiration = %s WHERE id = %s",
                        (undo["expiration"], _uuid(self.params.ref)))
            conn.commit()


# Tables whose rows Barbican soft-deletes with a secret (models.Secret._do_delete_children).
_SECRET_CHILDREN = ("encrypted_data", "secret_store_metadata", "secret_user_metadata",
                    "container_secret", "secret_acls", "secret_consumer_metadata")


def _undelete_secret(env, secret_id: str, since: str) -> None:
    """Undo a soft delete: the secret and the children deleted with it."""
    with _db(env) as conn, conn.cursor() as cur:
        cur.execute("UPDATE secrets SET deleted = 0, deleted_at = NULL, status = 'ACTIVE' WHERE id = %s",
                    (secret_id,))
        for table in _SECRET_CHILDREN:
            cur.execute(f"UPDATE {table} SET deleted = 0, deleted_at = NULL, status = 'ACTIVE' "
                        "WHERE secret_id = %s AND deleted_at >= %s", (secret_id, since))
        # ACL users hang off the ACL rows, not off the secret.
        cur.execute("UPDATE secret_acl_users u JOIN secret_acls a ON a.id = u.acl_id "
                    "SET u.deleted = 0, u.deleted_at = NULL, u.status = 'ACTIVE' "
                    "WHERE a.secret_id = %s AND u.deleted_at >= %s", (secret_id, since))
        conn.commit()


def _now_naive() -> str:
    return (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=1)).isoformat(sep=" ")


class MemberParams(Params):
    container_ref: str
    member: str = "private_key"


class ContainerMemberDeleted(Fault):
    """Container member deleted while in use: the private-key secret of a certificate
    container is deleted while the container (and its consumers) still exist; the
    container now lists fewer members and its users fail to build their TLS context."""

    name = "container_member_deleted"
    Params = MemberParams
    # Heal undeletes the member's rows (the API cannot undo a delete).
    capabilities = frozenset({Capability.API, DATABASE})

    def prepare(self, env) -> dict[str, Any]:
        container = env.barbican().containers.get(self.params.container_ref)
        refs = {name: s.secret_ref for name, s in container.secrets.items()}
        if self.params.member not in refs:
            raise FaultError(f"container has no member '{self.params.member}'; members: {sorted(refs)}")
        acl = env.session().get(refs[self.params.member] + "/acl", raise_exc=False)
        return {"secret_ref": refs[self.params.member], "since": _now_naive(),
                "acl": acl.json() if acl.status_code == 200 else None}

    def inject(self, env, undo: dict[str, Any]) -> None:
        r = env.session().delete(undo["secret_ref"], raise_exc=False)
        if r.status_code != 204:
            raise FaultError(f"delete of {undo['secret_ref']} refused: HTTP {r.status_code} {r.text[:200]}")

    def heal(self, env, undo: dict[str, Any]) -> None:
        _undelete_secret(env, _uuid(undo["secret_ref"]), undo["since"])
        read = (undo.get("acl") or {}).get("read")
        if read and read.get("users"):
            # Barbican hard-deletes a secret's ACL users; put back what the member had.
            body = {"read": {"users": read["users"], "project-access": read.get("project-access", True)}}
            env.session().put(undo["secret_ref"] + "/acl", json=body, raise_exc=False)


class ConsumerDeleteParams(Params):
    ref: str
    microversion: Literal["1.0", "1.1", "1.2"] = "1.1"
    force: bool = False


class ConsumerInUseDelete(Fault):
    """Secret deleted while consumers use it (a LUKS key under a volume, a TLS cert under a
    listener). At microversion 1.1 Barbican deletes it; at 1.2 it answers 400 unless
    ?force=true. The outcome is recorded in the journal ("status")."""

    name = "consumer_in_use_delete"
    Params = ConsumerDeleteParams
    capabilities = frozenset({Capability.API, DATABASE})

    def prepare(self, env) -> dict[str, Any]:
        return {"since": _now_naive()}

    def inject(self, env, undo: dict[str, Any]) -> None:
        url = self.params.ref + ("?force=true" if self.params.force else "")
        r = env.session().delete(url, raise_exc=False,
                                 headers={"OpenStack-API-Version": f"key-manager {self.params.microversion}"})
        undo["status"] = r.status_code
        undo["body"] = r.text[:300]

    def heal(self, env, undo: dict[str, Any]) -> None:
        _undelete_secret(env, _uuid(self.params.ref), undo["since"])
