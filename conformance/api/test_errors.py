"""Routing errors across the API: methods a resource does not support (405), unknown or malformed
ids and sub-resources (404), and the JSON error document Barbican answers with."""

from __future__ import annotations

import uuid

import pytest
import requests

from conformance.api import CRITICAL, MINOR, NORMAL, labels
from conformance.conftest import ref_path
from harness.known_bugs import known_bug

FEATURE = "Errors and routing"


@pytest.fixture
def refs(res):
    return {"secret": ref_path(res.secret()), "container": ref_path(res.container())}


METHOD_NOT_ALLOWED = [
    ("PUT", "/v1/secrets"), ("DELETE", "/v1/secrets"), ("PATCH", "/v1/secrets"),
    ("POST", "{secret}"), ("PATCH", "{secret}"),
    ("POST", "{secret}/payload"), ("PUT", "{secret}/payload"), ("DELETE", "{secret}/payload"),
    ("POST", "{secret}/acl"), ("PUT", "{secret}/consumers"),
    ("PUT", "/v1/containers"), ("DELETE", "/v1/containers"),
    ("PUT", "{container}"), ("POST", "{container}"), ("PATCH", "{container}"),
    ("DELETE", "/v1/orders"),
    ("POST", "/v1/quotas"), ("PUT", "/v1/quotas"), ("DELETE", "/v1/quotas"),
    ("POST", "/v1/project-quotas"),
    ("POST", "/v1"), ("DELETE", "/v1"),
]


@pytest.mark.parametrize("method,path", METHOD_NOT_ALLOWED, ids=[f"{m}-{p.strip('/').replace('/', '_')}"
                                                                 for m, p in METHOD_NOT_ALLOWED])
@labels(FEATURE, "405 Method Not Allowed", NORMAL)
def test_method_not_allowed(http, refs, method, path):
    """A method the resource does not implement is 405 with Barbican's JSON error document
    ({"code": 405, "title": "Method Not Allowed", ...}) and changes nothing."""
    path = path.format(**refs)
    body = {} if method in ("POST", "PUT", "PATCH") else None
    http.request(method, path, json=body).error(405, title="Method Not Allowed")
    assert http.get(refs["secret"]).status == 200 and http.get(refs["container"]).status == 200


@pytest.mark.parametrize("method,path", [("PUT", "/v1/transport_keys"), ("PUT", "/v1/transport_keys/{uuid}")],
                         ids=["PUT-list", "PUT-key"])  # (each costs uWSGI's 4 s socket timeout)
@known_bug("transport-keys-method-no-response")
@labels(FEATURE, "405 Method Not Allowed", MINOR)
def test_transport_keys_method_not_allowed(http, method, path):
    """An unsupported method on /v1/transport_keys[/{id}] is 405 like everywhere else."""
    path = path.format(uuid=uuid.uuid4())
    role = http.role("transport_key_admin")
    try:
        resp = http.request(method, path, role=role, json={} if method != "DELETE" else None)
    except requests.ConnectionError as exc:
        pytest.fail(f"{method} {path}: no HTTP response at all ({exc})")
    resp.error(405, title="Method Not Allowed")


NOT_FOUND = [
    ("/v1/secrets/not-a-uuid", "Not Found. Provided secret id is invalid."),
    ("/v1/secrets/{random}", "Secret not found."),
    ("/v1/secrets/{random}/payload", "Secret not found."),
    ("/v1/secrets/{random}/acl", "Secret not found."),
    ("/v1/containers/not-a-uuid", "Not Found. Provided container id is invalid."),
    ("/v1/containers/{random}", "Secrets container not found."),
    ("/v1/containers/{random}/consumers", "Secrets container not found."),
    ("/v1/orders/{random}", "Order not found."),
    ("/v1/transport_keys/not-a-uuid", "Not Found. Provided transport key id is invalid."),
    ("{secret}/consumers/not-a-uuid", "Not Found. Provided consumer id is invalid."),
    ("{container}/consumers/not-a-uuid", "Not Found. Provided consumer id is invalid."),
    ("{container}/consumers/{random}", "Consumer not found."),
]


@pytest.mark.parametrize("path,message", NOT_FOUND, ids=[p.replace("/v1/", "").strip("{}").replace("/", "_") for p, _ in NOT_FOUND])
@labels(FEATURE, "404 Not Found", CRITICAL)
def test_not_found(http, refs, path, message):
    """Unknown ids are 404 with a message saying what was not found; ids that are not UUIDs say
    'Provided ... id is invalid.'"""
    path = path.format(random=uuid.uuid4(), secret=refs["secret"], container=refs["container"])
    http.get(path).error(404, message, title="Not Found")


@pytest.mark.parametrize("path", ["/v1/bogus", "{secret}/bogus", "/v1/secret-stores/bogus/extra"])
@labels(FEATURE, "404 Not Found", NORMAL)
def test_unknown_path_is_404(http, refs, path):
    """Unknown resources and unknown sub-resources of a secret are 404."""
    http.get(path.format(**refs)).expect(404)


@pytest.mark.parametrize("method,path", [("GET", "{container}/bogus"), ("GET", "{secret}/payload/extra"),
                                         ("GET", "{secret}/metadata/key/extra"), ("PUT", "{secret}/metadata/key/extra")],
                         ids=["container-subresource", "payload-subpath", "get-metadatum-subpath",
                              "put-metadatum-subpath"])
@known_bug("unknown-subpath-500")
@labels(FEATURE, "404 Not Found", MINOR)
def test_unknown_subpath_is_404_not_500(http, refs, method, path):
    """GET /v1/containers/{id}/<unknown>, GET /v1/secrets/{id}/payload/<extra> and GET/PUT
    /v1/secrets/{id}/metadata/<key>/<extra> are 404, as unknown sub-resources of a secret are."""
    body = {"key": "key", "value": "v"} if method == "PUT" else None
    http.request(method, path.format(**refs), json=body).expect(404)


@labels(FEATURE, "error document", NORMAL)
def test_error_document_shape(http):
    """Barbican's errors are JSON {"code": <status>, "title": <reason phrase>, "description":
    <message>} with Content-Type application/json."""
    resp = http.get(f"/v1/secrets/{uuid.uuid4()}")
    body = resp.error(404)
    assert set(body) == {"code", "title", "description"}, resp.describe()
    assert resp.headers["Content-Type"].startswith("application/json"), resp.describe()


@labels(FEATURE, "request id", MINOR)
def test_responses_carry_request_id_and_version(http):
    """Every /v1 response carries x-openstack-request-id (req-<uuid>) and the microversion used
    (openstack-api-version: key-manager 1.x, 1.0 without a header)."""
    resp = http.get("/v1/secrets", params={"limit": 1})
    resp.expect(200)
    assert resp.headers["x-openstack-request-id"].startswith("req-"), resp.describe()
    assert resp.headers["openstack-api-version"] == "key-manager 1.0", resp.describe()
    resp = http.get("/v1/secrets", params={"limit": 1}, microversion="1.1")
    assert resp.headers["openstack-api-version"] == "key-manager 1.1", resp.describe()
