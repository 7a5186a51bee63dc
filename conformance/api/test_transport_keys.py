"""Transport keys (/v1/transport_keys): list, create (service admin under legacy policy, admin
under secure RBAC), read, delete."""

from __future__ import annotations

import uuid

import pytest

from conformance.api import CRITICAL, MINOR, NORMAL, labels
from conformance.conftest import ref_path
from harness.known_bugs import known_bug

FEATURE = "Transport keys"
FAKE_KEY = "-----BEGIN CERTIFICATE-----\nMIIBconformance\n-----END CERTIFICATE-----"


def _create(http, res, plugin: str) -> str:
    admin = http.role("transport_key_admin")
    resp = http.post("/v1/transport_keys", role=admin, json={"plugin_name": plugin, "transport_key": FAKE_KEY})
    body = resp.ok(201)
    assert set(body) == {"transport_key_ref"} and resp.headers["Location"] == body["transport_key_ref"]
    return res.track("transport_key", body["transport_key_ref"], admin)


@labels(FEATURE, "list", CRITICAL)
def test_list_transport_keys(http):
    """GET /v1/transport_keys (as the writer) is 200 {transport_keys: [hrefs], total}."""
    body = http.get("/v1/transport_keys").ok(200)
    assert set(body) >= {"transport_keys", "total"} and isinstance(body["total"], int)
    assert all("/v1/transport_keys/" in ref for ref in body["transport_keys"])


@labels(FEATURE, "create, read, delete", CRITICAL)
def test_transport_key_lifecycle(http, res):
    """The transport-key admin's POST is 201 {transport_key_ref}; the list filtered by plugin_name
    has exactly it; GET by id is 200 with the key, plugin_name, id and status ACTIVE; the admin's
    DELETE is 204 and the key leaves the list."""
    plugin = f"cf-plugin-{uuid.uuid4().hex[:8]}"
    ref = _create(http, res, plugin)
    listed = http.get("/v1/transport_keys", params={"plugin_name": plugin}).ok(200)
    assert listed == {"transport_keys": [ref], "total": 1}
    doc = http.get(ref_path(ref)).ok(200)
    assert doc["transport_key"] == FAKE_KEY and doc["plugin_name"] == plugin, doc
    assert doc["id"] == ref.rsplit("/", 1)[1] and doc["status"] == "ACTIVE", doc
    http.delete(ref_path(ref), role=http.role("transport_key_admin")).expect(204)
    assert http.get("/v1/transport_keys", params={"plugin_name": plugin}).ok(200) == {"transport_keys": [], "total": 0}


@labels(FEATURE, "create needs the transport-key admin", CRITICAL)
def test_writer_cannot_create_or_delete_transport_keys(http, res):
    """The writer gets 403 creating a transport key and deleting one."""
    http.post("/v1/transport_keys", json={"plugin_name": "x", "transport_key": FAKE_KEY}).denied(
        "Transport Key Creation")
    ref = _create(http, res, f"cf-plugin-{uuid.uuid4().hex[:8]}")
    http.delete(ref_path(ref)).denied("Transport Key deletion")
    http.get(ref_path(ref)).ok(200)


@pytest.mark.parametrize("body,reason", [
    ({"plugin_name": "p"}, "transport_key must be provided"),
    ({"transport_key": FAKE_KEY}, "plugin_name must be provided"),
    ({"plugin_name": "  ", "transport_key": FAKE_KEY}, "plugin_name must be provided"),
    ({"plugin_name": 5, "transport_key": FAKE_KEY}, "5 is not of type 'string'"),
])
@labels(FEATURE, "validation", NORMAL)
def test_invalid_transport_key_is_400(http, body, reason):
    """POST needs a non-empty plugin_name and transport_key (strings): otherwise 400."""
    http.post("/v1/transport_keys", role=http.role("transport_key_admin"), json=body).error(400, reason)


@labels(FEATURE, "not found", NORMAL)
def test_malformed_transport_key_id_is_404(http):
    """A transport key id that is not a UUID is 404 'Not Found. Provided transport key id is invalid.'"""
    http.get("/v1/transport_keys/not-a-uuid").error(404, "Not Found. Provided transport key id is invalid.")


@labels(FEATURE, "not found", NORMAL)
def test_delete_unknown_transport_key_is_404(http):
    """DELETE of an unknown transport key id is 404 'Not Found. Transport Key not found.'"""
    http.delete(f"/v1/transport_keys/{uuid.uuid4()}", role=http.role("transport_key_admin")).error(
        404, "Not Found. Transport Key not found.")


@pytest.mark.parametrize("which", ["never-existed", "deleted"])
@known_bug("transport-key-get-500")
@labels(FEATURE, "not found", MINOR)
def test_get_unknown_transport_key_is_404(http, res, which):
    """GET of a transport key that does not exist (never did, or was deleted) is 404 'Not Found.
    Transport Key not found.'"""
    if which == "deleted":
        ref = ref_path(_create(http, res, f"cf-plugin-{uuid.uuid4().hex[:8]}"))
        http.delete(ref, role=http.role("transport_key_admin")).expect(204)
    else:
        ref = f"/v1/transport_keys/{uuid.uuid4()}"
    http.get(ref).error(404, "Transport Key not found.")
