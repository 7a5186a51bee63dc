"""ACLs of secrets and containers: GET/PUT/PATCH/DELETE, project-access, reads by users of other
projects (other-member) and by a service user (Octavia pattern) through an ACL."""

from __future__ import annotations

import uuid

import pytest

from conformance.api import BLOCKER, CRITICAL, NORMAL, labels
from conformance.conftest import ref_path

FEATURE = "ACLs"
ENTITIES = ["secret", "container"]
DEFAULT_ACL = {"read": {"project-access": True}}


def _make(res, entity: str) -> str:
    if entity == "secret":
        return ref_path(res.secret(payload=f"acl-{uuid.uuid4().hex}", payload_content_type="text/plain"))
    return ref_path(res.container(secret_refs={"a": res.secret()}))


def _read(http, entity: str, path: str, role: str):
    """The read an ACL grants: the payload for a secret, the document for a container."""
    if entity == "secret":
        return http.payload(path, accept="text/plain", role=role)
    return http.get(path, role=role)


@pytest.mark.parametrize("entity", ENTITIES)
@labels(FEATURE, "default ACL", CRITICAL)
def test_default_acl(http, res, entity):
    """Without an ACL, GET .../acl is 200 {"read": {"project-access": true}}."""
    assert http.get(_make(res, entity) + "/acl").ok(200) == DEFAULT_ACL


@pytest.mark.parametrize("entity", ENTITIES)
@labels(FEATURE, "PUT / PATCH / DELETE", BLOCKER)
def test_acl_put_patch_delete(http, res, entity):
    """PUT .../acl replaces the ACL (200 {acl_ref}); GET shows users, project-access, created and
    updated; PATCH replaces the users it names and keeps project-access unless given; PATCH of
    project-access alone keeps the users; DELETE is 200 (body null) and restores the default."""
    path = _make(res, entity)
    acl = path + "/acl"
    u1, u2 = http.user_id("other-member"), http.user_id("service")
    put = http.put(acl, json={"read": {"users": [u1], "project-access": False}})
    assert put.ok(200)["acl_ref"].endswith(acl), put.describe()
    got = http.get(acl).ok(200)
    assert set(got) == {"read"} and got["read"]["users"] == [u1] and got["read"]["project-access"] is False
    assert {"created", "updated"} <= set(got["read"])
    assert http.patch(acl, json={"read": {"users": [u2]}}).ok(200)["acl_ref"].endswith(acl)
    got = http.get(acl).ok(200)["read"]
    assert got["users"] == [u2] and got["project-access"] is False
    http.patch(acl, json={"read": {"project-access": True}}).ok(200)
    got = http.get(acl).ok(200)["read"]
    assert got["users"] == [u2] and got["project-access"] is True
    resp = http.delete(acl)
    assert resp.ok(200) is None and resp.text == "null", resp.describe()
    assert http.get(acl).ok(200) == DEFAULT_ACL


@pytest.mark.parametrize("entity", ENTITIES)
@labels(FEATURE, "PUT / PATCH / DELETE", NORMAL)
def test_put_without_project_access_means_true(http, res, entity):
    """PUT with users only sets project-access true (the documented default)."""
    acl = _make(res, entity) + "/acl"
    http.put(acl, json={"read": {"users": [http.user_id("service")], "project-access": False}}).ok(200)
    http.put(acl, json={"read": {"users": [http.user_id("service")]}}).ok(200)
    assert http.get(acl).ok(200)["read"]["project-access"] is True


@pytest.mark.parametrize("entity", ENTITIES)
@labels(FEATURE, "PUT / PATCH / DELETE", NORMAL)
def test_put_empty_acl_removes_it(http, res, entity):
    """PUT {} removes every operation's ACL: GET shows the default again."""
    acl = _make(res, entity) + "/acl"
    http.put(acl, json={"read": {"users": [http.user_id("service")], "project-access": False}}).ok(200)
    http.put(acl, json={}).ok(200)
    assert http.get(acl).ok(200) == DEFAULT_ACL


INVALID_ACLS = {
    "write-operation": ({"write": {"users": []}}, "Additional properties are not allowed ('write' was unexpected)"),
    "users-not-array": ({"read": {"users": "abc"}}, "'abc' is not of type 'array'"),
    "unknown-field": ({"read": {"groups": []}}, "Additional properties are not allowed ('groups' was unexpected)"),
    "project-access-not-bool": ({"read": {"project-access": "no"}}, "'no' is not of type 'boolean'"),
    "user-not-string": ({"read": {"users": [12]}}, "12 is not of type 'string'"),
}


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize("case", list(INVALID_ACLS))
@labels(FEATURE, "validation", NORMAL)
def test_invalid_acl_is_400(http, res, case, method):
    """Only a 'read' ACL {users: [string], project-access: bool} is accepted; anything else is 400
    'Provided object does not match schema 'ACL'...' and the ACL is unchanged."""
    acl = _make(res, "secret") + "/acl"
    body, reason = INVALID_ACLS[case]
    err = http.request(method, acl, json=body).error(400, reason)
    assert "schema 'ACL'" in err["description"]
    assert http.get(acl).ok(200) == DEFAULT_ACL


@pytest.mark.parametrize("entity", ENTITIES)
@labels(FEATURE, "user of another project reads through an ACL", BLOCKER)
def test_other_project_user_reads_only_with_acl(http, res, entity):
    """A member of another project gets 403 reading the secret payload / container; once the
    owner adds them to the read ACL the read is 200 (same bytes); after DELETE of the ACL it is
    403 again."""
    path = _make(res, entity)
    reader = "other-member"
    _read(http, entity, path, reader).denied()
    http.put(path + "/acl", json={"read": {"users": [http.user_id(reader)]}}).ok(200)
    owner_view = _read(http, entity, path, http.writer)
    _read(http, entity, path, reader).payload_is(owner_view.content, f"{entity} as read by {reader}")
    if entity == "secret":
        assert http.get(path, role=reader).ok(200)["secret_ref"].endswith(path)
    http.delete(path + "/acl").ok(200)
    _read(http, entity, path, reader).denied()


@pytest.mark.parametrize("entity", ENTITIES)
@labels(FEATURE, "service user reads through an ACL (Octavia)", BLOCKER)
def test_service_user_reads_through_acl(http, res, entity):
    """The Octavia-like 'service' user (project 'service', only the 'service' role) reads a
    secret payload / container once it is in the read ACL, and is refused (403) before. It may
    not read or change the ACL itself, nor delete the entity."""
    path = _make(res, entity)
    _read(http, entity, path, "service").denied()
    http.put(path + "/acl", json={"read": {"users": [http.user_id("service")], "project-access": True}}).ok(200)
    _read(http, entity, path, "service").ok(200)
    http.get(path + "/acl", role="service").denied()
    http.put(path + "/acl", role="service", json={"read": {"users": []}}).denied()
    http.delete(path, role="service").denied()
    _read(http, entity, path, http.writer).ok(200)


# A second project-a user who reads the project's non-private secrets (not the owner).
PEER = {"legacy": "observer", "secure-rbac": None}


@labels(FEATURE, "project-access false (private)", BLOCKER)
def test_project_access_false_makes_secret_private(http, res):
    """With project-access false only the creator, the project admin and the ACL users read the
    payload: a same-project reader that could read it before gets 403, the listed user of another
    project 200."""
    peer = PEER[http.policy]
    if peer is None:
        pytest.skip("secure-rbac: project-a has a single member (the owner) and readers never decrypt, "
                    "so no same-project non-owner can read a non-private secret")
    path = _make(res, "secret")
    data = _read(http, "secret", path, http.writer).expect(200).content
    _read(http, "secret", path, peer).payload_is(data)
    http.put(path + "/acl", json={"read": {"users": [http.user_id("other-member")], "project-access": False}}).ok(200)
    _read(http, "secret", path, peer).denied("Secret payload retrieval")
    _read(http, "secret", path, http.writer).payload_is(data)
    _read(http, "secret", path, http.role("project_admin")).payload_is(data)
    _read(http, "secret", path, "other-member").payload_is(data)
    http.patch(path + "/acl", json={"read": {"project-access": True}}).ok(200)
    _read(http, "secret", path, peer).payload_is(data)


@labels(FEATURE, "secrets shared with me (acl_only)", CRITICAL)
def test_acl_only_lists_secrets_shared_with_caller(http, res, uname):
    """GET /v1/secrets?acl_only=true by a user of another project lists exactly the secrets whose
    read ACL names them (here: one of two secrets with the same name)."""
    caller = http.role("other_writer")
    name = uname()
    shared = res.secret(name=name)
    res.secret(name=name)
    params = {"acl_only": "true", "name": name}
    assert http.get("/v1/secrets", role=caller, params=params).ok(200) == {"secrets": [], "total": 0}
    http.put(ref_path(shared) + "/acl", json={"read": {"users": [http.user_id(caller)]}}).ok(200)
    body = http.get("/v1/secrets", role=caller, params=params).ok(200)
    assert [s["secret_ref"] for s in body["secrets"]] == [shared] and body["total"] == 1


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
@labels(FEATURE, "project isolation", CRITICAL)
def test_other_project_cannot_manage_acl(http, res, method):
    """A member of another project gets 403 on GET/PUT/PATCH/DELETE of a secret's ACL, even
    while it is in that ACL."""
    path = _make(res, "secret")
    caller = "other-member"
    http.put(path + "/acl", json={"read": {"users": [http.user_id(caller)]}}).ok(200)
    body = {"read": {"users": [http.user_id(caller)], "project-access": False}} if method in ("PUT", "PATCH") else None
    http.request(method, path + "/acl", role=caller, json=body).denied()
    got = http.get(path + "/acl").ok(200)["read"]
    assert got["users"] == [http.user_id(caller)] and got["project-access"] is True


@pytest.mark.parametrize("entity,message", [("secrets", "Secret not found."),
                                            ("containers", "Secrets container not found.")])
@labels(FEATURE, "missing entity", NORMAL)
def test_acl_of_missing_entity_is_404(http, entity, message):
    """The ACL of a secret or container that does not exist is 404."""
    http.get(f"/v1/{entity}/{uuid.uuid4()}/acl").error(404, message)
