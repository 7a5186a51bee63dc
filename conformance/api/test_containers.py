"""Containers: generic, rsa and certificate; secret references; add/remove secrets; lists."""

from __future__ import annotations

import uuid

import pytest

from conformance.api import BLOCKER, CRITICAL, MINOR, NORMAL, labels
from conformance.conftest import ref_path

FEATURE = "Containers"

# type -> reference names (all must resolve)
VALID = {
    "generic-empty": ("generic", []),
    "generic-two": ("generic", ["first", "second"]),
    "rsa": ("rsa", ["private_key", "public_key"]),
    "rsa-with-passphrase": ("rsa", ["private_key", "public_key", "private_key_passphrase"]),
    "certificate": ("certificate", ["certificate"]),
    "certificate-full": ("certificate", ["certificate", "private_key", "private_key_passphrase", "intermediates"]),
    "certificate-empty": ("certificate", []),  # accepted: the name rules only run when refs are given
}


@pytest.mark.parametrize("case", list(VALID))
@labels(FEATURE, "create and read", BLOCKER)
def test_create_container(http, res, uname, case):
    """POST /v1/containers is 201 {container_ref} with Location; GET is 200 with name, type,
    status ACTIVE, creator_id, consumers [] and secret_refs naming each referenced secret."""
    ctype, names = VALID[case]
    secrets = {n: res.secret(name=uname(n)) for n in names}
    name = uname(case)
    cref = res.container(type=ctype, secret_refs=secrets, name=name)
    resp = http.get(ref_path(cref))
    doc = resp.ok(200)
    assert doc["name"] == name and doc["type"] == ctype and doc["status"] == "ACTIVE", resp.describe()
    assert doc["container_ref"] == cref and doc["consumers"] == [], resp.describe()
    assert doc["creator_id"] == http.user_id(http.writer), resp.describe()
    assert {r["name"]: r["secret_ref"] for r in doc["secret_refs"]} == secrets, resp.describe()


@labels(FEATURE, "create and read", CRITICAL)
def test_container_location_header(http, res):
    """The 201 of POST /v1/containers carries Location = container_ref."""
    resp = http.post("/v1/containers", json={"type": "generic", "name": "cf-location"})
    ref = res.track("container", resp.ok(201)["container_ref"])
    assert resp.headers["Location"] == ref


INVALID = {
    "bad-type": ({"type": "bogus"}, [], "'bogus' is not one of ['generic', 'rsa', 'certificate']"),
    "missing-type": ({}, [], "'type' is a required property"),
    "rsa-wrong-name": ({"type": "rsa"}, ["private_key", "public_key", "other"],
                       "only 'private_key', 'public_key' and 'private_key_passphrase' reference names are allowed"),
    "rsa-missing-public": ({"type": "rsa"}, ["private_key"],
                           "The minimum required reference names are 'public_key' and'private_key' for RSA type"),
    "certificate-wrong-name": ({"type": "certificate"}, ["certificate", "chain"],
                               "reference names are allowed for Certificate type"),
    "certificate-missing": ({"type": "certificate"}, ["private_key"],
                            "The minimum required reference name is 'certificate' for Certificate type"),
    "duplicate-names": ({"type": "generic"}, ["same", "same"], "Duplicate reference names are not allowed"),
    "name-too-long": ({"type": "generic", "name": "n" * 256}, [], "is too long"),
}


@pytest.mark.parametrize("case", list(INVALID))
@labels(FEATURE, "validation", CRITICAL)
def test_invalid_container_is_400(http, res, case):
    """Container bodies that break the schema or the per-type reference-name rules are 400
    'Provided object does not match schema 'Container': <reason>'."""
    body, names, reason = INVALID[case]
    body = {"name": body.get("name", f"cf-invalid-{case}"), **body}
    body["secret_refs"] = [{"name": n, "secret_ref": res.secret()} for n in names]
    resp = http.post("/v1/containers", json=body)
    if resp.status == 201:
        res.track("container", resp.json["container_ref"])
    err = resp.error(400, reason)
    assert err["description"].startswith("Provided object does not match schema 'Container'"), resp.describe()


@labels(FEATURE, "validation", NORMAL)
def test_same_secret_twice_is_400(http, res):
    """One secret may appear only once in a container: 400 'Duplicate secret ids are not allowed'."""
    s = res.secret()
    http.post("/v1/containers", json={"type": "generic", "name": "cf-dup", "secret_refs": [
        {"name": "a", "secret_ref": s}, {"name": "b", "secret_ref": s}]}).error(
        400, "Duplicate secret ids are not allowed")


@labels(FEATURE, "validation", NORMAL)
def test_secret_ref_of_another_host_is_400(http, res):
    """A secret_ref whose host is not this Barbican's host_href is refused (no spoofing): 400."""
    s = res.secret()
    foreign = "http://barbican.elsewhere.example:9311" + ref_path(s)
    http.post("/v1/containers", json={"type": "generic", "name": "cf-foreign", "secret_refs": [
        {"name": "a", "secret_ref": foreign}]}).error(400, "Provided field value is not supported")


@labels(FEATURE, "validation", CRITICAL)
def test_missing_secret_is_404(http):
    """A reference to a secret that does not exist is 404 "Secret provided for '<name>' doesn't exist.\""""
    missing = http.node_url() + f"/v1/secrets/{uuid.uuid4()}"
    http.post("/v1/containers", json={"type": "generic", "name": "cf-missing", "secret_refs": [
        {"name": "ghost", "secret_ref": missing}]}).error(404, "Secret provided for 'ghost' doesn't exist.")


@labels(FEATURE, "project isolation", BLOCKER)
def test_secret_of_another_project_is_404(http, res):
    """A container cannot reference another project's secret: 404 as if it did not exist."""
    theirs = res.secret(role=http.role("other_writer"))
    http.post("/v1/containers", json={"type": "generic", "name": "cf-theirs", "secret_refs": [
        {"name": "theirs", "secret_ref": theirs}]}).error(404, "Secret provided for 'theirs' doesn't exist.")


# -- add/remove secrets ----------------------------------------------------------------------------
@labels(FEATURE, "add and remove secrets", BLOCKER)
def test_add_and_remove_secret(http, res):
    """POST .../secrets {name, secret_ref} adds a reference (201 {container_ref}); the same
    name+secret again is 409; the same secret under another name is 201; DELETE .../secrets with
    {name, secret_ref} is 204 and a second time 404 'Secret provided is not in the container'."""
    cref = ref_path(res.container(secret_refs={"a": res.secret()}))
    s = res.secret()
    added = http.post(cref + "/secrets", json={"name": "b", "secret_ref": s})
    assert added.ok(201) == {"container_ref": http.get(cref).json["container_ref"]}
    http.post(cref + "/secrets", json={"name": "b", "secret_ref": s}).error(
        409, "A secret with that name and ID is already stored in this container", title="Conflict")
    http.post(cref + "/secrets", json={"name": "b-again", "secret_ref": s}).ok(201)
    names = sorted(r["name"] for r in http.get(cref).ok(200)["secret_refs"])
    assert names == ["a", "b", "b-again"]
    http.delete(cref + "/secrets", json={"name": "b", "secret_ref": s}).expect(204)
    http.delete(cref + "/secrets", json={"name": "b", "secret_ref": s}).error(
        404, "Secret provided is not in the container")
    names = sorted(r["name"] for r in http.get(cref).ok(200)["secret_refs"])
    assert names == ["a", "b-again"]


@pytest.mark.parametrize("ctype,names", [("rsa", ["private_key", "public_key"]), ("certificate", ["certificate"])])
@labels(FEATURE, "add and remove secrets", NORMAL)
def test_only_generic_containers_can_be_modified(http, res, ctype, names):
    """Adding a secret to an rsa or certificate container is 400 "Only 'generic' containers can
    be modified.\""""
    cref = ref_path(res.container(type=ctype, secret_refs={n: res.secret() for n in names}))
    http.post(cref + "/secrets", json={"name": "extra", "secret_ref": res.secret()}).error(
        400, "Only 'generic' containers can be modified.")


@labels(FEATURE, "add and remove secrets", NORMAL)
def test_add_missing_secret_is_404(http, res):
    """Adding a secret that does not exist is 404 "Secret provided doesn't exist.\""""
    cref = ref_path(res.container())
    http.post(cref + "/secrets", json={"name": "x", "secret_ref": http.node_url() + f"/v1/secrets/{uuid.uuid4()}"}
              ).error(404, "Secret provided doesn't exist.")


@labels(FEATURE, "add and remove secrets", NORMAL)
def test_add_secret_without_ref_is_400(http, res):
    """POST .../secrets without secret_ref is 400 (ContainerSecret schema)."""
    cref = ref_path(res.container())
    http.post(cref + "/secrets", json={"name": "x"}).error(400, "'secret_ref' is a required property")


# -- read, list, delete ------------------------------------------------------------------------------
@labels(FEATURE, "delete", BLOCKER)
def test_delete_container_keeps_secrets(http, res):
    """DELETE /v1/containers/{id} is 204; the container is then 404 'Secrets container not
    found.' (also on a second DELETE), and the referenced secrets still exist."""
    s = res.secret()
    cref = ref_path(res.container(secret_refs={"kept": s}))
    resp = http.delete(cref)
    resp.expect(204)
    assert resp.content == b""
    http.get(cref).error(404, "Secrets container not found.")
    http.delete(cref).error(404, "Secrets container not found.")
    assert http.get(ref_path(s)).ok(200)["secret_ref"] == s


@labels(FEATURE, "list", CRITICAL)
def test_list_filters_and_paging(http, res, uname):
    """GET /v1/containers filters by name and type and pages with limit/offset/total/next."""
    name = uname()
    refs = [res.container(name=name) for _ in range(3)]
    rsa = res.container(name=name, type="rsa", secret_refs={"private_key": res.secret(), "public_key": res.secret()})
    body = http.get("/v1/containers", params={"name": name}).ok(200)
    assert body["total"] == 4 and {c["container_ref"] for c in body["containers"]} == set(refs) | {rsa}
    body = http.get("/v1/containers", params={"name": name, "type": "rsa"}).ok(200)
    assert [c["container_ref"] for c in body["containers"]] == [rsa]
    page = http.get("/v1/containers", params={"name": name, "limit": 2, "offset": 1}).ok(200)
    assert page["total"] == 4 and len(page["containers"]) == 2
    assert "previous" in page and "next" in page
    assert http.get("/v1/containers", params={"name": f"cf-none-{uuid.uuid4().hex}"}).ok(200) == {
        "containers": [], "total": 0}


@pytest.mark.parametrize("path,message", [
    ("/v1/containers/not-a-uuid", "Not Found. Provided container id is invalid."),
    ("/v1/containers/{random}", "Secrets container not found."),
], ids=["malformed-id", "unknown-id"])
@labels(FEATURE, "not found", NORMAL)
def test_unknown_container_is_404(http, path, message):
    """GET of a malformed or unknown container id is 404 with a message saying which."""
    http.get(path.format(random=uuid.uuid4())).error(404, message)


@pytest.mark.parametrize("operation", ["get", "delete", "add-secret"])
@labels(FEATURE, "project isolation", BLOCKER)
def test_other_project_cannot_touch_container(http, res, operation):
    """Without an ACL, a member of another project gets 403 reading, deleting or modifying a
    container; it is unchanged afterwards."""
    cref = ref_path(res.container(secret_refs={"a": res.secret()}))
    caller = "other-member"
    if operation == "get":
        http.get(cref, role=caller).denied("Container retrieval")
    elif operation == "delete":
        http.delete(cref, role=caller).denied("Container deletion")
    else:
        theirs = res.secret(role=http.role("other_writer"))
        http.post(cref + "/secrets", role=caller, json={"name": "x", "secret_ref": theirs}).denied()
    assert [r["name"] for r in http.get(cref).ok(200)["secret_refs"]] == ["a"]


@labels(FEATURE, "deleted secret in a container", MINOR)
def test_container_after_its_secret_is_deleted(http, res):
    """Deleting a secret that a container references is allowed (204); the container stays
    readable and no longer lists that secret."""
    keep, drop = res.secret(), res.secret()
    cref = ref_path(res.container(secret_refs={"keep": keep, "drop": drop}))
    http.delete(ref_path(drop)).expect(204)
    doc = http.get(cref).ok(200)
    assert [r["name"] for r in doc["secret_refs"]] == ["keep"]
