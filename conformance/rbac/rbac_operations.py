"""The operations and actors of the RBAC matrix, and how each operation is performed.

Shared by the test (`test_rbac_matrix.py`) and the generator of the expected files
(`derive_expected.py`), so both name operations and actors the same way.

Every call is raw HTTP through the actor's keystoneauth Session (no client library in
between), against the target's first node: `sess.request(node.url + '/v1/...', ...)`.
"""

from __future__ import annotations

import secrets as _rand
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent

# -- actors ---------------------------------------------------------------------------------
# project: which seeded project the actor's token is scoped to ("a", "b", "service", "admin").
# roles: the role names in the token. Keystone's bootstrap makes admin imply manager,
# member and reader, and member imply reader (observed in every harness environment).
# role: the harness role whose credentials the actor uses ("service-acl" is the 'service'
# user, acting on resources whose read ACL lists it).
ADMIN_ROLES = ("admin", "manager", "member", "reader")


@dataclass(frozen=True)
class Actor:
    name: str
    role: str
    project: str
    roles: tuple[str, ...]
    in_acl: bool = False
    doc: str = ""


ACTORS: list[Actor] = [
    Actor("admin", "admin", "a", ADMIN_ROLES, doc="admin of the resources' project"),
    Actor("member", "member", "a", ("member", "reader"), doc="member of the resources' project"),
    Actor("reader", "reader", "a", ("reader",), doc="reader of the resources' project"),
    Actor("creator", "creator", "a", ("creator",), doc="legacy 'creator' of the resources' project"),
    Actor("observer", "observer", "a", ("observer",), doc="legacy 'observer' of the resources' project"),
    Actor("audit", "audit", "a", ("audit",), doc="legacy 'audit' of the resources' project"),
    Actor("other-admin", "other-admin", "b", ADMIN_ROLES, doc="admin of another project"),
    Actor("other-member", "other-member", "b", ("member", "reader"), doc="member of another project"),
    Actor("other-creator", "other-creator", "b", ("creator",), doc="legacy 'creator' of another project"),
    Actor("service", "service", "service", ("service",),
          doc="Octavia-like service user (only the 'service' role), not in the resource's ACL"),
    Actor("service-acl", "service", "service", ("service",), in_acl=True,
          doc="the same service user, listed in the resource's read ACL"),
    Actor("service-admin", "service-admin", "service", ("key-manager:service-admin",),
          doc="user with Barbican's legacy key-manager:service-admin role"),
    Actor("cloud-admin", "cloud-admin", "admin", ADMIN_ROLES, doc="admin of the 'admin' project"),
]
ACTOR_BY_NAME = {a.name: a for a in ACTORS}

# The harness role that is admin of each project (cleanup of what an actor created).
PROJECT_ADMIN = {"a": "admin", "b": "other-admin", "admin": "cloud-admin", "service": None}


# -- operations -----------------------------------------------------------------------------
@dataclass
class Op:
    id: str                 # "secret:decrypt"; the test id is "<id>-<actor>"
    feature: str            # allure feature (the resource)
    story: str              # allure story (the operation)
    method: str
    path: str               # documentation only
    rule: str               # the Barbican policy rule the controller enforces
    status: int             # status of an allowed call
    entity: str | None = None   # policy target: secret | container | order | None
    private: bool = False       # the target secret has read project-access false
    severity: str = "normal"
    # With a single secret store: "after-policy" → an allowed call gets 404 (multiple
    # backends disabled) and a denied one 403; "before-policy" → 404 whoever calls.
    single_store: str | None = None
    needs: tuple[str, ...] = ()  # keys of the expected file's "setup" roles this operation uses
    run: Callable = field(default=None, repr=False)   # run(ctx, actor) -> Result
    doc: str = ""


@dataclass
class Result:
    resp: object                                  # requests.Response
    check_allowed: Callable | None = None         # check_allowed(resp): body of an allowed call
    after: Callable | None = None                 # after(allowed: bool): state afterwards


class Ctx:
    """Resources and sessions for one target. Shared resources are created once, by the
    owner (the target's writer role), on first use; everything created is removed in
    `close()`."""

    def __init__(self, target, setup: dict):
        self.target = target
        self.owner = target.writer_role
        self.setup = setup  # role names from the expected file's "setup" section
        self.base = target.nodes[0].url.rstrip("/")
        self.multi_store = len(target.backends) > 1
        self._shared: dict = {}
        self._cleanup: list[tuple[str, list[str], str, dict]] = []  # (method, roles, url, kwargs)
        self._ids: dict = {}
        self._lock = threading.RLock()
        self._warm: set[str] = set()

    # -- HTTP -------------------------------------------------------------------------------
    def session(self, role: str):
        """The role's keystoneauth Session, authenticated, holding no idle connection.

        The harness serves Keystone and Barbican with uWSGI http11-socket and few threads
        (Barbican: 4 per node). A client's idle keep-alive connection pins a uWSGI thread
        until the 4 s socket timeout, and uWSGI keeps the connection open even when the
        request says `Connection: close`. With 13 actors' sessions each keeping one, every
        5th new connection stalls ~3.8 s. So no connection is kept: the session's pool is
        closed after authentication and after every request (a new localhost TCP
        connection costs far less)."""
        sess = self.target.session(role)
        if role not in self._warm:
            sess.get_token()
            sess.session.close()
            self._warm.add(role)
        return sess

    def req(self, role: str, method: str, path: str, json=None, headers=None, data=None, **kw):
        url = path if path.startswith("http") else self.base + path
        hdrs = {"Accept": "application/json", "Connection": "close"}
        hdrs.update(headers or {})
        sess = self.session(role)
        try:
            return sess.request(url, method, raise_exc=False, json=json, headers=hdrs, data=data, **kw)
        finally:
            sess.session.close()

    def ok(self, resp, *codes):
        if resp.status_code not in codes:
            raise AssertionError(f"setup call {resp.request.method} {resp.request.url} → "
                                 f"{resp.status_code} {resp.text[:300]}")
        return resp

    def user_id(self, role: str) -> str:
        key = ("user", role)
        if key not in self._ids:
            self._ids[key] = self.session(role).get_user_id()
        return self._ids[key]

    def has_role(self, role: str) -> bool:
        return role in self.target.roles

    def on_close(self, method: str, url: str, roles: list[str | None], **kwargs):
        self._cleanup.append((method, [r for r in roles if r and self.has_role(r)], url, kwargs))

    def close(self) -> list[str]:
        """Delete everything created, newest first; returns what could not be removed."""
        left = []
        for method, roles, url, kwargs in reversed(self._cleanup):
            kwargs = {"headers": {"Accept": "*/*"}, **kwargs}
            for role in roles:
                resp = self.req(role, method, url, **kwargs)
                if resp.status_code < 300 or resp.status_code == 404:
                    break
            else:
                left.append(f"{method} {url}")
        self._cleanup.clear()
        self._shared.clear()
        return left

    def cleanup_roles(self, role: str) -> list[str | None]:
        """Who can remove what `role` created: itself, then its project's admin."""
        for a in ACTORS:
            if a.role == role:
                return [role, PROJECT_ADMIN.get(a.project), self.setup.get("project_admin")]
        return [role, self.setup.get("project_admin")]

    # -- resources --------------------------------------------------------------------------
    @staticmethod
    def name(kind: str) -> str:
        return f"rbac-{kind}-{_rand.token_hex(4)}"

    def new_secret(self, role: str | None = None, *, payload: bool = True, acl: bool = False,
                   private: bool = False, metadata: dict | None = None) -> dict:
        role = role or self.owner
        body = {"name": self.name("secret")}
        value = _rand.token_hex(16)
        if payload:
            body.update(payload=value, payload_content_type="text/plain")
        resp = self.ok(self.req(role, "POST", "/v1/secrets", json=body), 201)
        ref = resp.json()["secret_ref"]
        self.on_close("DELETE", ref, self.cleanup_roles(role))
        if acl or private:
            users = [self.user_id("service")] if acl else []
            self.ok(self.req(role, "PUT", ref + "/acl",
                             json={"read": {"users": users, "project-access": not private}}), 200)
        if metadata:
            self.ok(self.req(role, "PUT", ref + "/metadata", json={"metadata": metadata}), 201)
        return {"ref": ref, "payload": value if payload else None, "metadata": metadata or {}}

    def new_container(self, role: str | None = None, *, acl: bool = False, with_secret: bool = True) -> dict:
        role = role or self.owner
        body = {"type": "generic", "name": self.name("container"), "secret_refs": []}
        secret = None
        if with_secret:
            secret = self.shared_secret()
            body["secret_refs"] = [{"name": "s", "secret_ref": secret["ref"]}]
        resp = self.ok(self.req(role, "POST", "/v1/containers", json=body), 201)
        ref = resp.json()["container_ref"]
        self.on_close("DELETE", ref, self.cleanup_roles(role))
        if acl:
            self.ok(self.req(role, "PUT", ref + "/acl",
                             json={"read": {"users": [self.user_id("service")]}}), 200)
        return {"ref": ref, "secret": secret}

    def new_order(self, role: str | None = None) -> dict:
        role = role or self.owner
        resp = self.ok(self.req(role, "POST", "/v1/orders", json=ORDER_BODY()), 202)
        ref = resp.json()["order_ref"]
        self.track_order(ref, role)
        return {"ref": ref}

    def track_order(self, order_ref: str, role: str, timeout: float = 30.0):
        """Remove the order and the secret it makes at the end. The secret is there at once
        without a worker, a moment later with one; wait for it now, as a later delete of
        the order would leave no way to find it."""
        roles = self.cleanup_roles(role)
        self.on_close("DELETE", order_ref, roles)
        deadline = time.monotonic() + timeout
        while True:
            resp = self.req(role, "GET", order_ref)
            body = resp.json() if resp.status_code == 200 else {}
            if body.get("status") != "PENDING" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if body.get("secret_ref"):
            self.on_close("DELETE", body["secret_ref"], roles)

    def new_transport_key(self) -> dict:
        role = self.setup["transport_key_admin"]
        resp = self.ok(self.req(role, "POST", "/v1/transport_keys", json=TRANSPORT_KEY_BODY()), 201)
        ref = resp.json()["transport_key_ref"]
        self.on_close("DELETE", ref, [role])
        return {"ref": ref}

    def new_quota_project(self, with_quotas: bool = True) -> str:
        """A project id nobody uses (quotas are keyed by any project id string), so quota
        tests never change the limits of the projects the other tests run in."""
        project = "rbac" + _rand.token_hex(14)
        role = self.setup["quota_admin"]
        if with_quotas:
            self.ok(self.req(role, "PUT", f"/v1/project-quotas/{project}", json=QUOTA_BODY), 204)
        self.on_close("DELETE", f"/v1/project-quotas/{project}", [role])
        return project

    def shared(self, key, make: Callable):
        with self._lock:
            if key not in self._shared:
                self._shared[key] = make()
            return self._shared[key]

    def shared_secret(self, acl: bool = False, private: bool = False) -> dict:
        return self.shared(("secret", acl, private), lambda: self.new_secret(
            acl=acl, private=private, metadata={"rbac": "conformance"}))

    def shared_container(self, acl: bool = False) -> dict:
        return self.shared(("container", acl), lambda: self.new_container(acl=acl))

    def shared_order(self) -> dict:
        return self.shared("order", self.new_order)

    def shared_transport_key(self) -> dict:
        return self.shared("transport_key", self.new_transport_key)

    def shared_quota_project(self) -> str:
        return self.shared("quota_project", self.new_quota_project)

    def store_id(self) -> str:
        """A secret store id: the global default's with several stores; with one store any
        uuid does (the route answers 404 before looking it up)."""
        def find():
            if not self.multi_store:
                return "00000000-0000-4000-8000-000000000000"
            resp = self.ok(self.req(self.setup["project_admin"], "GET", "/v1/secret-stores/global-default"), 200)
            return resp.json()["secret_store_ref"].rstrip("/").rsplit("/", 1)[1]
        return self.shared("store_id", find)


def ORDER_BODY():
    return {"type": "key", "meta": {"name": Ctx.name("order"), "algorithm": "aes", "bit_length": 256,
                                    "mode": "cbc", "payload_content_type": "application/octet-stream"}}


def TRANSPORT_KEY_BODY():
    return {"plugin_name": "rbac-conformance",
            "transport_key": "-----BEGIN PUBLIC KEY-----\nrbac-conformance-" + _rand.token_hex(8)
                             + "\n-----END PUBLIC KEY-----"}


QUOTA_BODY = {"project_quotas": {"secrets": 500, "orders": 100, "containers": 100,
                                 "consumers": 100, "cas": 10}}

PAYLOAD_HEADERS = {"Accept": "text/plain"}


# -- helpers for checks ---------------------------------------------------------------------
def _json(resp) -> dict:
    try:
        return resp.json()
    except ValueError:
        raise AssertionError(f"not JSON: {resp.text[:300]!r}") from None


def has_keys(*keys):
    def check(resp):
        body = _json(resp)
        missing = [k for k in keys if k not in body]
        assert not missing, f"response body lacks {missing}: {body}"
    return check


def ref_is(ref):
    def check(resp):
        body = _json(resp)
        got = body.get("secret_ref") or body.get("container_ref") or body.get("order_ref")
        assert got and got.rstrip("/").endswith(ref.rstrip("/").rsplit("/", 1)[1]), \
            f"body names {got}, expected {ref}"
    return check


def text_is(value):
    def check(resp):
        assert resp.text == value, f"payload differs: got {resp.text[:80]!r}"
    return check


def empty_body(resp):
    assert not resp.content, f"expected no body, got {resp.text[:200]!r}"


def still_there(ctx: Ctx, url: str, role: str | None = None):
    """after(allowed): gone (404) when the delete was allowed, intact (200) when denied."""
    def after(allowed: bool):
        resp = ctx.req(role or ctx.owner, "GET", url, headers={"Accept": "*/*"})
        want = 404 if allowed else 200
        assert resp.status_code == want, (
            f"after the {'allowed' if allowed else 'denied'} call, GET {url} by "
            f"{role or ctx.owner} → {resp.status_code}, expected {want}")
    return after


def consumer_count(ctx: Ctx, url: str, body_match: dict, created: bool = False):
    """after(allowed) of consumer create (present iff allowed) and delete (gone iff allowed)."""
    def after(allowed: bool):
        resp = ctx.ok(ctx.req(ctx.owner, "GET", url + "/consumers?limit=100"), 200)
        present = any(all(c.get(k) == v for k, v in body_match.items())
                      for c in resp.json().get("consumers", []))
        want = allowed if created else not allowed
        assert present == want, (f"consumer {body_match} {'present' if present else 'absent'} after the "
                                 f"{'allowed' if allowed else 'denied'} {'create' if created else 'delete'}")
    return after


# -- the operations -------------------------------------------------------------------------
OPS: list[Op] = []


def op(id, feature, story, method, path, rule, status, **kw):
    def register(fn):
        OPS.append(Op(id, feature, story, method, path, rule, status, run=fn, **kw))
        return fn
    return register


# secrets ---------------------------------------------------------------------------------------
@op("secret:list", "secrets", "list secrets", "GET", "/v1/secrets", "secrets:get", 200, severity="critical")
def _(ctx, actor):
    return Result(ctx.req(actor.role, "GET", "/v1/secrets?limit=1"), has_keys("secrets", "total"))


@op("secret:list-acl-only", "secrets", "list secrets shared with the caller (acl_only)", "GET",
    "/v1/secrets?acl_only=true", "secrets:get", 200,
    doc="the same rule as listing: a user who may read a secret through its ACL may still be "
        "unable to list what is shared with it")
def _(ctx, actor):
    ctx.shared_secret(acl=True)  # something is shared with the service user

    def check(resp):
        body = _json(resp)
        assert "secrets" in body and "total" in body, resp.text[:200]
    return Result(ctx.req(actor.role, "GET", "/v1/secrets?acl_only=true&limit=1"), check)


@op("secret:create", "secrets", "create secret", "POST", "/v1/secrets", "secrets:post", 201, severity="critical")
def _(ctx, actor):
    body = {"name": ctx.name("secret"), "payload": _rand.token_hex(8), "payload_content_type": "text/plain"}
    resp = ctx.req(actor.role, "POST", "/v1/secrets", json=body)
    if resp.status_code == 201:
        ctx.on_close("DELETE", resp.json()["secret_ref"], ctx.cleanup_roles(actor.role))
    return Result(resp, has_keys("secret_ref"))


@op("secret:get", "secrets", "get secret metadata", "GET", "/v1/secrets/{id}", "secret:get", 200,
    entity="secret", severity="critical")
def _(ctx, actor):
    s = ctx.shared_secret(acl=actor.in_acl)
    return Result(ctx.req(actor.role, "GET", s["ref"]), ref_is(s["ref"]))


@op("secret:decrypt", "secrets", "get secret payload", "GET", "/v1/secrets/{id}/payload", "secret:decrypt", 200,
    entity="secret", severity="blocker")
def _(ctx, actor):
    s = ctx.shared_secret(acl=actor.in_acl)
    return Result(ctx.req(actor.role, "GET", s["ref"] + "/payload", headers=PAYLOAD_HEADERS),
                  text_is(s["payload"]))


@op("secret:decrypt-by-accept", "secrets", "get secret payload (Accept on the secret URL, deprecated)",
    "GET", "/v1/secrets/{id} (Accept: text/plain)", "secret:decrypt", 200, entity="secret", severity="blocker",
    doc="Barbican swaps secret:get for secret:decrypt when Accept is not JSON")
def _(ctx, actor):
    s = ctx.shared_secret(acl=actor.in_acl)
    return Result(ctx.req(actor.role, "GET", s["ref"], headers=PAYLOAD_HEADERS), text_is(s["payload"]))


@op("secret:put-payload", "secrets", "put payload into a metadata-only secret", "PUT", "/v1/secrets/{id}",
    "secret:put", 204, entity="secret", severity="critical")
def _(ctx, actor):
    s = ctx.new_secret(payload=False, acl=actor.in_acl)
    value = _rand.token_hex(8)
    resp = ctx.req(actor.role, "PUT", s["ref"], data=value.encode(),
                   headers={"Content-Type": "text/plain", "Accept": "*/*"})

    def after(allowed):
        got = ctx.req(ctx.owner, "GET", s["ref"] + "/payload", headers=PAYLOAD_HEADERS)
        if allowed:
            assert got.status_code == 200 and got.text == value, f"payload not stored: {got.status_code}"
        else:
            assert got.status_code == 404, f"denied PUT left a payload? {got.status_code}"
    return Result(resp, empty_body, after)


@op("secret:delete", "secrets", "delete secret", "DELETE", "/v1/secrets/{id}", "secret:delete", 204,
    entity="secret", severity="blocker")
def _(ctx, actor):
    s = ctx.new_secret(acl=actor.in_acl)
    return Result(ctx.req(actor.role, "DELETE", s["ref"], headers={"Accept": "*/*"}), empty_body,
                  still_there(ctx, s["ref"]))


@op("secret-private:get", "secrets", "get metadata of a private secret (project-access false)",
    "GET", "/v1/secrets/{id}", "secret:get", 200, entity="secret", private=True, severity="critical")
def _(ctx, actor):
    s = ctx.shared_secret(acl=actor.in_acl, private=True)
    return Result(ctx.req(actor.role, "GET", s["ref"]), ref_is(s["ref"]))


@op("secret-private:decrypt", "secrets", "get payload of a private secret (project-access false)",
    "GET", "/v1/secrets/{id}/payload", "secret:decrypt", 200, entity="secret", private=True, severity="blocker")
def _(ctx, actor):
    s = ctx.shared_secret(acl=actor.in_acl, private=True)
    return Result(ctx.req(actor.role, "GET", s["ref"] + "/payload", headers=PAYLOAD_HEADERS),
                  text_is(s["payload"]))


@op("secret-private:delete", "secrets", "delete a private secret (project-access false)", "DELETE",
    "/v1/secrets/{id}", "secret:delete", 204, entity="secret", private=True, severity="blocker")
def _(ctx, actor):
    s = ctx.new_secret(acl=actor.in_acl, private=True)
    return Result(ctx.req(actor.role, "DELETE", s["ref"], headers={"Accept": "*/*"}), empty_body,
                  still_there(ctx, s["ref"]))


# secret metadata ------------------------------------------------------------------------------
@op("secret-metadata:get", "secret metadata", "list secret metadata", "GET", "/v1/secrets/{id}/metadata",
    "secret_meta:get", 200, entity="secret")
def _(ctx, actor):
    s = ctx.shared_secret(acl=actor.in_acl)

    def check(resp):
        assert _json(resp).get("metadata") == s["metadata"], resp.text[:200]
    return Result(ctx.req(actor.role, "GET", s["ref"] + "/metadata"), check)


@op("secret-metadata:get-key", "secret metadata", "get one metadata key", "GET",
    "/v1/secrets/{id}/metadata/{key}", "secret_meta:get", 200, entity="secret")
def _(ctx, actor):
    s = ctx.shared_secret(acl=actor.in_acl)

    def check(resp):
        assert _json(resp) == {"key": "rbac", "value": "conformance"}, resp.text[:200]
    return Result(ctx.req(actor.role, "GET", s["ref"] + "/metadata/rbac"), check)


@op("secret-metadata:put", "secret metadata", "replace all metadata", "PUT", "/v1/secrets/{id}/metadata",
    "secret_meta:put", 201, entity="secret")
def _(ctx, actor):
    s = ctx.new_secret(acl=actor.in_acl, metadata={"k": "v0"})
    resp = ctx.req(actor.role, "PUT", s["ref"] + "/metadata", json={"metadata": {"k": "v1"}})
    return Result(resp, has_keys("metadata_ref"), _meta_after(ctx, s["ref"], {"k": "v1"}, {"k": "v0"}))


@op("secret-metadata:post", "secret metadata", "add a metadata key", "POST", "/v1/secrets/{id}/metadata",
    "secret_meta:post", 201, entity="secret")
def _(ctx, actor):
    s = ctx.new_secret(acl=actor.in_acl, metadata={"k": "v0"})
    resp = ctx.req(actor.role, "POST", s["ref"] + "/metadata", json={"key": "new", "value": "v"})

    def check(r):
        assert _json(r) == {"key": "new", "value": "v"}, r.text[:200]
        assert r.headers.get("Location", "").endswith("/metadata/new"), r.headers.get("Location")
    return Result(resp, check,
                  _meta_after(ctx, s["ref"], {"k": "v0", "new": "v"}, {"k": "v0"}))


@op("secret-metadata:put-key", "secret metadata", "update one metadata key", "PUT",
    "/v1/secrets/{id}/metadata/{key}", "secret_meta:put", 200, entity="secret")
def _(ctx, actor):
    s = ctx.new_secret(acl=actor.in_acl, metadata={"k": "v0"})
    resp = ctx.req(actor.role, "PUT", s["ref"] + "/metadata/k", json={"key": "k", "value": "v1"})

    def check(r):
        assert _json(r) == {"key": "k", "value": "v1"}, r.text[:200]
    return Result(resp, check, _meta_after(ctx, s["ref"], {"k": "v1"}, {"k": "v0"}))


@op("secret-metadata:delete-key", "secret metadata", "delete one metadata key", "DELETE",
    "/v1/secrets/{id}/metadata/{key}", "secret_meta:delete", 204, entity="secret")
def _(ctx, actor):
    s = ctx.new_secret(acl=actor.in_acl, metadata={"k": "v0"})
    resp = ctx.req(actor.role, "DELETE", s["ref"] + "/metadata/k")
    return Result(resp, empty_body, _meta_after(ctx, s["ref"], {}, {"k": "v0"}))


def _meta_after(ctx, ref, if_allowed, if_denied):
    def after(allowed):
        got = ctx.ok(ctx.req(ctx.owner, "GET", ref + "/metadata"), 200).json().get("metadata")
        want = if_allowed if allowed else if_denied
        assert got == want, f"metadata after the {'allowed' if allowed else 'denied'} call: {got}, expected {want}"
    return after


# secret ACLs ----------------------------------------------------------------------------------
def _acl_ops(kind: str, feature: str, entity: str, rule_prefix: str):
    def resource(ctx, actor, fresh):
        if kind == "secret":
            return ctx.new_secret(acl=actor.in_acl) if fresh else ctx.shared_secret(acl=actor.in_acl)
        return ctx.new_container(acl=actor.in_acl) if fresh else ctx.shared_container(acl=actor.in_acl)

    def acl_after(ctx, ref, changed: bool):
        def after(allowed):
            body = ctx.ok(ctx.req(ctx.owner, "GET", ref + "/acl"), 200).json()
            project_access = body.get("read", {}).get("project-access")
            modified = project_access is False
            assert modified == (allowed and changed), f"ACL after the call: {body}"
        return after

    @op(f"{kind}-acl:get", feature, f"get {kind} ACL", "GET", f"/v1/{kind}s/{{id}}/acl",
        f"{rule_prefix}:get", 200, entity=entity)
    def _(ctx, actor):
        r = resource(ctx, actor, False)
        return Result(ctx.req(actor.role, "GET", r["ref"] + "/acl"), has_keys("read"))

    @op(f"{kind}-acl:put", feature, f"replace {kind} ACL", "PUT", f"/v1/{kind}s/{{id}}/acl",
        f"{rule_prefix}:put_patch", 200, entity=entity)
    def _(ctx, actor):
        r = resource(ctx, actor, True)
        resp = ctx.req(actor.role, "PUT", r["ref"] + "/acl", json={"read": {"project-access": False}})
        return Result(resp, has_keys("acl_ref"), acl_after(ctx, r["ref"], True))

    @op(f"{kind}-acl:patch", feature, f"update {kind} ACL", "PATCH", f"/v1/{kind}s/{{id}}/acl",
        f"{rule_prefix}:put_patch", 200, entity=entity)
    def _(ctx, actor):
        r = resource(ctx, actor, True)
        resp = ctx.req(actor.role, "PATCH", r["ref"] + "/acl", json={"read": {"project-access": False}})
        return Result(resp, has_keys("acl_ref"), acl_after(ctx, r["ref"], True))

    @op(f"{kind}-acl:delete", feature, f"delete {kind} ACL", "DELETE", f"/v1/{kind}s/{{id}}/acl",
        f"{rule_prefix}:delete", 200, entity=entity,
        doc="answers 200 with a JSON null body (no status is set in the controller)")
    def _(ctx, actor):
        r = resource(ctx, actor, True)
        # make the ACL non-default first so that deleting it is observable
        ctx.ok(ctx.req(ctx.owner, "PATCH", r["ref"] + "/acl", json={"read": {"project-access": False}}), 200)

        def after(allowed):
            body = ctx.ok(ctx.req(ctx.owner, "GET", r["ref"] + "/acl"), 200).json()
            reverted = body.get("read", {}).get("project-access") is True
            assert reverted == allowed, f"ACL after the {'allowed' if allowed else 'denied'} delete: {body}"
        return Result(ctx.req(actor.role, "DELETE", r["ref"] + "/acl"), None, after)


# secret consumers -----------------------------------------------------------------------------
def _consumer_ops(kind: str, feature: str, entity: str, rule_prefix: str):
    def resource(ctx, actor):
        return ctx.shared_secret(acl=actor.in_acl) if kind == "secret" else ctx.shared_container(acl=actor.in_acl)

    def body():
        tag = _rand.token_hex(6)
        if kind == "secret":
            return {"service": "rbac", "resource_type": "loadbalancer", "resource_id": tag}
        return {"name": "rbac", "URL": f"http://rbac.invalid/{tag}"}

    @op(f"{kind}-consumer:list", feature, f"list {kind} consumers", "GET", f"/v1/{kind}s/{{id}}/consumers",
        f"{rule_prefix}:get", 200, entity=entity)
    def _(ctx, actor):
        r = resource(ctx, actor)
        return Result(ctx.req(actor.role, "GET", r["ref"] + "/consumers"), has_keys("consumers", "total"))

    @op(f"{kind}-consumer:create", feature, f"register {kind} consumer", "POST", f"/v1/{kind}s/{{id}}/consumers",
        f"{rule_prefix}:post", 200, entity=entity, severity="critical")
    def _(ctx, actor):
        r = resource(ctx, actor)
        b = body()
        resp = ctx.req(actor.role, "POST", r["ref"] + "/consumers", json=b)
        return Result(resp, ref_is(r["ref"]), consumer_count(ctx, r["ref"], b, created=True))

    @op(f"{kind}-consumer:delete", feature, f"remove {kind} consumer", "DELETE", f"/v1/{kind}s/{{id}}/consumers",
        f"{rule_prefix}:delete", 200, entity=entity,
        doc="the consumer is registered by the actor when the actor may register one, else by the owner")
    def _(ctx, actor):
        r = resource(ctx, actor)
        b = body()
        url = r["ref"] + "/consumers"
        if ctx.req(actor.role, "POST", url, json=b).status_code != 200:
            ctx.ok(ctx.req(ctx.owner, "POST", url, json=b), 200)
        return Result(ctx.req(actor.role, "DELETE", url, json=b), ref_is(r["ref"]),
                      consumer_count(ctx, r["ref"], b))


# containers ------------------------------------------------------------------------------------
@op("container:list", "containers", "list containers", "GET", "/v1/containers", "containers:get", 200)
def _(ctx, actor):
    return Result(ctx.req(actor.role, "GET", "/v1/containers?limit=1"), has_keys("containers", "total"))


@op("container:create", "containers", "create container", "POST", "/v1/containers", "containers:post", 201)
def _(ctx, actor):
    resp = ctx.req(actor.role, "POST", "/v1/containers",
                   json={"type": "generic", "name": ctx.name("container"), "secret_refs": []})
    if resp.status_code == 201:
        ctx.on_close("DELETE", resp.json()["container_ref"], ctx.cleanup_roles(actor.role))
    return Result(resp, has_keys("container_ref"))


@op("container:get", "containers", "get container", "GET", "/v1/containers/{id}", "container:get", 200,
    entity="container", severity="critical")
def _(ctx, actor):
    c = ctx.shared_container(acl=actor.in_acl)
    return Result(ctx.req(actor.role, "GET", c["ref"]), ref_is(c["ref"]))


@op("container:delete", "containers", "delete container", "DELETE", "/v1/containers/{id}", "container:delete", 204,
    entity="container", severity="critical")
def _(ctx, actor):
    c = ctx.new_container(acl=actor.in_acl, with_secret=False)
    return Result(ctx.req(actor.role, "DELETE", c["ref"], headers={"Accept": "*/*"}), empty_body,
                  still_there(ctx, c["ref"]))


def _container_secrets(ctx, ref):
    body = ctx.ok(ctx.req(ctx.owner, "GET", ref), 200).json()
    return {(s["name"], s["secret_ref"].rstrip("/").rsplit("/", 1)[1]) for s in body.get("secret_refs", [])}


@op("container:add-secret", "containers", "add a secret to a container", "POST", "/v1/containers/{id}/secrets",
    "container_secret:post", 201, entity="container")
def _(ctx, actor):
    c = ctx.new_container(acl=actor.in_acl, with_secret=False)
    s = ctx.shared_secret()
    resp = ctx.req(actor.role, "POST", c["ref"] + "/secrets", json={"name": "added", "secret_ref": s["ref"]})
    sid = s["ref"].rstrip("/").rsplit("/", 1)[1]

    def after(allowed):
        assert (("added", sid) in _container_secrets(ctx, c["ref"])) == allowed
    return Result(resp, has_keys("container_ref"), after)


@op("container:remove-secret", "containers", "remove a secret from a container", "DELETE",
    "/v1/containers/{id}/secrets", "container_secret:delete", 204, entity="container")
def _(ctx, actor):
    c = ctx.new_container(acl=actor.in_acl, with_secret=True)
    s = c["secret"]
    resp = ctx.req(actor.role, "DELETE", c["ref"] + "/secrets", json={"name": "s", "secret_ref": s["ref"]},
                   headers={"Accept": "*/*"})
    sid = s["ref"].rstrip("/").rsplit("/", 1)[1]

    def after(allowed):
        assert (("s", sid) in _container_secrets(ctx, c["ref"])) != allowed
    return Result(resp, empty_body, after)


# orders -------------------------------------------------------------------------------------------
@op("order:list", "orders", "list orders", "GET", "/v1/orders", "orders:get", 200)
def _(ctx, actor):
    return Result(ctx.req(actor.role, "GET", "/v1/orders?limit=1"), has_keys("orders", "total"))


@op("order:create", "orders", "create a key order", "POST", "/v1/orders", "orders:post", 202, severity="critical",
    needs=("project_admin",))
def _(ctx, actor):
    resp = ctx.req(actor.role, "POST", "/v1/orders", json=ORDER_BODY())
    if resp.status_code == 202:
        ctx.track_order(resp.json()["order_ref"], actor.role)
    return Result(resp, has_keys("order_ref"))


@op("order:get", "orders", "get order", "GET", "/v1/orders/{id}", "order:get", 200, entity="order",
    needs=("project_admin",))
def _(ctx, actor):
    o = ctx.shared_order()

    def check(resp):
        assert _json(resp).get("order_ref") == o["ref"], resp.text[:200]
    return Result(ctx.req(actor.role, "GET", o["ref"]), check)


@op("order:delete", "orders", "delete order", "DELETE", "/v1/orders/{id}", "order:delete", 204, entity="order",
    needs=("project_admin",))
def _(ctx, actor):
    o = ctx.new_order()
    return Result(ctx.req(actor.role, "DELETE", o["ref"], headers={"Accept": "*/*"}), empty_body,
                  still_there(ctx, o["ref"], ctx.setup["project_admin"]))


@op("order:update", "orders", "update orders (unsupported)", "PUT", "/v1/orders", "orders:put", 405,
    severity="minor", doc="the policy check runs first; an allowed caller gets 405 'Order update is not supported.'")
def _(ctx, actor):
    def check(resp):
        assert "not supported" in resp.text, resp.text[:200]
    return Result(ctx.req(actor.role, "PUT", "/v1/orders", json={}), check)


# quotas -------------------------------------------------------------------------------------------
@op("quota:get", "quotas", "get effective quotas", "GET", "/v1/quotas", "quotas:get", 200)
def _(ctx, actor):
    return Result(ctx.req(actor.role, "GET", "/v1/quotas"), has_keys("quotas"))


@op("project-quota:list", "quotas", "list project quotas", "GET", "/v1/project-quotas", "project_quotas:get", 200)
def _(ctx, actor):
    return Result(ctx.req(actor.role, "GET", "/v1/project-quotas"), has_keys("project_quotas"))


@op("project-quota:get", "quotas", "get one project's quotas", "GET", "/v1/project-quotas/{project}",
    "project_quotas:get", 200, needs=("quota_admin",))
def _(ctx, actor):
    p = ctx.shared_quota_project()

    def check(resp):
        assert _json(resp).get("project_quotas", {}).get("secrets") == 500, resp.text[:200]
    return Result(ctx.req(actor.role, "GET", f"/v1/project-quotas/{p}"), check)


@op("project-quota:put", "quotas", "set a project's quotas", "PUT", "/v1/project-quotas/{project}",
    "project_quotas:put", 204, severity="critical", needs=("quota_admin",))
def _(ctx, actor):
    p = ctx.new_quota_project(with_quotas=False)
    resp = ctx.req(actor.role, "PUT", f"/v1/project-quotas/{p}", json=QUOTA_BODY, headers={"Accept": "*/*"})

    def after(allowed):
        got = ctx.req(ctx.setup["quota_admin"], "GET", f"/v1/project-quotas/{p}")
        assert got.status_code == (200 if allowed else 404), f"quotas afterwards: {got.status_code}"
    return Result(resp, empty_body, after)


@op("project-quota:delete", "quotas", "delete a project's quotas", "DELETE", "/v1/project-quotas/{project}",
    "project_quotas:delete", 204, severity="critical", needs=("quota_admin",))
def _(ctx, actor):
    p = ctx.new_quota_project(with_quotas=True)
    resp = ctx.req(actor.role, "DELETE", f"/v1/project-quotas/{p}", headers={"Accept": "*/*"})

    def after(allowed):
        got = ctx.req(ctx.setup["quota_admin"], "GET", f"/v1/project-quotas/{p}")
        assert got.status_code == (404 if allowed else 200), f"quotas afterwards: {got.status_code}"
    return Result(resp, empty_body, after)


# secret stores ------------------------------------------------------------------------------------
@op("secret-store:list", "secret stores", "list secret stores", "GET", "/v1/secret-stores",
    "secretstores:get", 200, single_store="after-policy")
def _(ctx, actor):
    return Result(ctx.req(actor.role, "GET", "/v1/secret-stores"), has_keys("secret_stores"))


@op("secret-store:global-default", "secret stores", "get the global default store", "GET",
    "/v1/secret-stores/global-default", "secretstores:get_global_default", 200, single_store="after-policy")
def _(ctx, actor):
    return Result(ctx.req(actor.role, "GET", "/v1/secret-stores/global-default"), has_keys("secret_store_ref"))


@op("secret-store:preferred", "secret stores", "get the project's preferred store", "GET",
    "/v1/secret-stores/preferred", "secretstores:get_preferred", 404, single_store="after-policy",
    doc="no project has a preferred store here, so an allowed caller gets 404 'No preferred secret store'")
def _(ctx, actor):
    def check(resp):
        assert "preferred secret store" in resp.text or "Multiple backends" in resp.text, resp.text[:200]
    return Result(ctx.req(actor.role, "GET", "/v1/secret-stores/preferred"), check)


@op("secret-store:get", "secret stores", "get one secret store", "GET", "/v1/secret-stores/{id}",
    "secretstore:get", 200, single_store="before-policy", needs=("project_admin",))
def _(ctx, actor):
    return Result(ctx.req(actor.role, "GET", f"/v1/secret-stores/{ctx.store_id()}"), has_keys("secret_store_ref"))


@op("secret-store:set-preferred", "secret stores", "set the project's preferred store", "POST",
    "/v1/secret-stores/{id}/preferred", "secretstore_preferred:post", 204, single_store="before-policy",
    needs=("project_admin",))
def _(ctx, actor):
    url = f"/v1/secret-stores/{ctx.store_id()}/preferred"
    resp = ctx.req(actor.role, "POST", url, headers={"Accept": "*/*"})
    if resp.status_code == 204:
        ctx.on_close("DELETE", url, [actor.role])

    def after(allowed):
        if resp.status_code != 204:
            return
        # the actor's project now has a preferred store; read it back, then unset it at once
        # so that no later case sees it
        got = ctx.req(actor.role, "GET", "/v1/secret-stores/preferred")
        ctx.req(actor.role, "DELETE", url, headers={"Accept": "*/*"})
        assert got.status_code == 200 and got.json()["secret_store_ref"].endswith(ctx.store_id()), \
            f"preferred store after setting it: {got.status_code} {got.text[:200]}"
    return Result(resp, empty_body, after)


@op("secret-store:unset-preferred", "secret stores", "unset the project's preferred store", "DELETE",
    "/v1/secret-stores/{id}/preferred", "secretstore_preferred:delete", 204, single_store="before-policy",
    doc="the actor first sets a preferred store for its project when it may", needs=("project_admin",))
def _(ctx, actor):
    url = f"/v1/secret-stores/{ctx.store_id()}/preferred"
    was_set = ctx.req(actor.role, "POST", url, headers={"Accept": "*/*"}).status_code == 204
    resp = ctx.req(actor.role, "DELETE", url, headers={"Accept": "*/*"})
    if was_set and resp.status_code != 204:
        ctx.on_close("DELETE", url, [actor.role])
    return Result(resp, empty_body)


# transport keys -----------------------------------------------------------------------------------
@op("transport-key:list", "transport keys", "list transport keys", "GET", "/v1/transport_keys",
    "transport_keys:get", 200)
def _(ctx, actor):
    return Result(ctx.req(actor.role, "GET", "/v1/transport_keys"), has_keys("transport_keys", "total"))


@op("transport-key:get", "transport keys", "get a transport key", "GET", "/v1/transport_keys/{id}",
    "transport_key:get", 200, doc="sent with Accept */*: this route answers 406 to Accept application/json, "
                                  "before the policy check", needs=("transport_key_admin",))
def _(ctx, actor):
    k = ctx.shared_transport_key()
    return Result(ctx.req(actor.role, "GET", k["ref"], headers={"Accept": "*/*"}), has_keys("transport_key"))


@op("transport-key:create", "transport keys", "create a transport key", "POST", "/v1/transport_keys",
    "transport_keys:post", 201, severity="critical", needs=("transport_key_admin",))
def _(ctx, actor):
    resp = ctx.req(actor.role, "POST", "/v1/transport_keys", json=TRANSPORT_KEY_BODY())
    if resp.status_code == 201:
        ctx.on_close("DELETE", resp.json()["transport_key_ref"], [actor.role, ctx.setup["transport_key_admin"]])
    return Result(resp, has_keys("transport_key_ref"))


@op("transport-key:delete", "transport keys", "delete a transport key", "DELETE", "/v1/transport_keys/{id}",
    "transport_key:delete", 204, severity="critical", needs=("transport_key_admin",))
def _(ctx, actor):
    k = ctx.new_transport_key()
    resp = ctx.req(actor.role, "DELETE", k["ref"], headers={"Accept": "*/*"})

    def after(allowed):
        # GET of a deleted transport key answers 500 (TransportKeyController.on_get does not
        # suppress NotFound), so look for it in the list instead.
        listed = _transport_key_listed(ctx, k["ref"])
        assert listed != allowed, f"transport key {'still listed' if listed else 'gone'} after the " \
                                  f"{'allowed' if allowed else 'denied'} delete"
    return Result(resp, empty_body, after)


def _transport_key_listed(ctx, ref) -> bool:
    role = ctx.setup["transport_key_admin"]
    offset = 0
    while True:
        body = ctx.ok(ctx.req(role, "GET", f"/v1/transport_keys?plugin_name=rbac-conformance&limit=100"
                                           f"&offset={offset}", headers={"Accept": "*/*"}), 200).json()
        keys = body.get("transport_keys", [])
        if ref in keys:
            return True
        offset += len(keys)
        if not keys or offset >= body.get("total", 0):
            return False


# Registration order = report order: the ACL and consumer families after their resources.
_acl_ops("secret", "secret ACLs", "secret", "secret_acls")
_acl_ops("container", "container ACLs", "container", "container_acls")
_consumer_ops("secret", "secret consumers", "secret", "secret_consumers")
_consumer_ops("container", "container consumers", "container", "container_consumers")

OP_BY_ID = {o.id: o for o in OPS}


# -- expected files -------------------------------------------------------------------------
EXPECTED_FILES = {"legacy": HERE / "expected_legacy.yaml", "secure-rbac": HERE / "expected_secure_rbac.yaml"}


def load_expected(policy: str) -> dict:
    path = EXPECTED_FILES.get(policy)
    if path is None:
        raise ValueError(f"no expected file for policy {policy!r}")
    return yaml.safe_load(path.read_text())
