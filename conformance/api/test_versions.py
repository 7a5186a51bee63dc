"""Version discovery, microversion negotiation and authentication of the v1 API."""

from __future__ import annotations

import pytest

from conformance.api import BLOCKER, CRITICAL, MINOR, NORMAL, labels

FEATURE = "Versions and microversions"


def _links(doc: dict) -> dict:
    return {link["rel"]: link for link in doc["links"]}


@labels(FEATURE, "GET / lists the versions", BLOCKER)
def test_root_lists_versions_with_300(http):
    """GET / without a token answers 300 Multiple Choices with the v1 version (legacy 1.0 format:
    versions.values[], status 'stable', media-types, a self link to /v1/)."""
    resp = http.get("/", role=None, headers={"Accept": "application/json"})
    body = resp.ok(300)
    values = body["versions"]["values"]
    assert len(values) == 1, resp.describe()
    v1 = values[0]
    assert v1["id"] == "v1" and v1["status"] == "stable", resp.describe()
    assert _links(v1)["self"]["href"].rstrip("/").endswith("/v1"), resp.describe()
    assert v1["media-types"] == [{"base": "application/json",
                                  "type": "application/vnd.openstack.key-manager-v1+json"}], resp.describe()
    assert "max_version" not in v1, resp.describe()


@pytest.mark.parametrize("microversion", ["1.1", "1.2"])
@labels(FEATURE, "GET / with a microversion header", CRITICAL)
def test_root_with_microversion_shows_min_and_max(http, caps, microversion):
    """From microversion 1.1, GET / lists versions[] with status CURRENT and min/max_version; the
    max is the one recorded in capabilities.yaml (1.2 for Barbican 23.0.0)."""
    if not caps.supports_microversion(microversion):
        pytest.skip(f"server max microversion {caps.max_microversion} < {microversion}")
    resp = http.get("/", role=None, microversion=microversion, headers={"Accept": "application/json"})
    body = resp.ok(300)
    (v1,) = body["versions"]
    assert v1["id"] == "v1" and v1["status"] == "CURRENT", resp.describe()
    assert v1["min_version"] == caps.server("min_microversion"), resp.describe()
    assert v1["max_version"] == caps.server("max_microversion"), resp.describe()
    assert "media-types" not in v1, resp.describe()


@pytest.mark.parametrize("microversion,current", [(None, False), ("1.0", False), ("1.1", True), ("1.2", True)])
@labels(FEATURE, "GET /v1", BLOCKER)
def test_v1_document(http, caps, microversion, current):
    """GET /v1 (authenticated) answers 200 with the version document: 'stable' + media-types at
    1.0 (or without header), 'CURRENT' + min/max_version from 1.1."""
    if microversion and not caps.supports_microversion(microversion):
        pytest.skip(f"server max microversion {caps.max_microversion} < {microversion}")
    resp = http.get("/v1", microversion=microversion)
    version = resp.ok(200)["version"]
    assert version["id"] == "v1", resp.describe()
    assert _links(version)["self"]["href"].rstrip("/").endswith("/v1"), resp.describe()
    if current:
        assert version["status"] == "CURRENT", resp.describe()
        assert (version["min_version"], version["max_version"]) == (
            caps.server("min_microversion"), caps.server("max_microversion")), resp.describe()
    else:
        assert version["status"] == "stable", resp.describe()
        assert "max_version" not in version, resp.describe()


@labels(FEATURE, "server build", MINOR)
def test_build_version(http):
    """GET /?build answers 200 {"build": "<barbican version>"} without a token."""
    resp = http.get("/?build", role=None)
    body = resp.ok(200)
    assert set(body) == {"build"} and isinstance(body["build"], str) and body["build"], resp.describe()
    assert body["build"].split(".")[0].isdigit(), resp.describe()


@labels(FEATURE, "json-home redirect", MINOR)
def test_json_home_redirects_to_v1(http):
    """GET / with Accept: application/json-home is redirected (302) to the default version /v1/."""
    resp = http.get("/", role=None, headers={"Accept": "application/json-home"})
    resp.expect(302)
    assert resp.headers["Location"].rstrip("/").endswith("/v1"), resp.describe()


@pytest.mark.parametrize("header,status,message", [
    ("key-manager 1.3", 406, "Unacceptable version header: 1.3"),
    ("key-manager 1.99", 406, "Unacceptable version header: 1.99"),
    ("key-manager 2.0", 406, "Unacceptable version header: 2.0"),
    ("key-manager one", 400, "invalid version string: one"),
    ("key-manager 1", 400, "invalid version string"),
])
@labels(FEATURE, "unsupported microversion", NORMAL)
def test_unsupported_microversion(http, header, status, message):
    """A well-formed microversion outside min..max is refused with 406 Not Acceptable
    ('Invalid microversion: Unacceptable version header: X'); a malformed one with 400
    ('Invalid microversion: invalid version string'). Both are HTML pages from the microversion
    middleware, before any policy check."""
    resp = http.get("/v1/secrets", headers={"OpenStack-API-Version": header})
    resp.expect(status)
    assert "Invalid microversion" in resp.text and message in resp.text, resp.describe()


@labels(FEATURE, "microversion latest", NORMAL)
def test_microversion_latest_is_max(http, caps):
    """'key-manager latest' is accepted and behaves as the max version: secrets carry 'consumers'."""
    ref = http.post("/v1/secrets", json={"name": "cf-latest"}).ok(201)["secret_ref"]
    try:
        resp = http.get(ref[ref.find("/v1/"):], headers={"OpenStack-API-Version": "key-manager latest"})
        body = resp.ok(200)
        assert "consumers" in body, resp.describe()
    finally:
        http.delete(ref[ref.find("/v1/"):], role=http.role("project_admin"))


@pytest.mark.parametrize("path", ["/v1", "/v1/secrets", "/v1/containers", "/v1/orders", "/v1/quotas",
                                  "/v1/transport_keys", "/v1/secret-stores", "/v1/project-quotas"])
@labels(FEATURE, "authentication required", BLOCKER)
def test_no_token_is_401(http, path):
    """Every /v1 resource needs a Keystone token: without X-Auth-Token the answer is 401 with
    keystonemiddleware's error document ('requires authentication')."""
    resp = http.get(path, role=None)
    resp.error(401, "requires authentication", title="Unauthorized")
    assert "WWW-Authenticate" in resp.headers, resp.describe()


@pytest.mark.parametrize("method", ["GET", "POST"])
@labels(FEATURE, "authentication required", CRITICAL)
def test_bogus_token_is_401(http, method):
    """A token Keystone does not know is refused with 401 before Barbican sees the request."""
    resp = http.request(method, "/v1/secrets", role=None, token="gAAAAAbogus-token-" + "x" * 40,
                        json={"name": "x"} if method == "POST" else None)
    resp.error(401, "requires authentication")


@labels(FEATURE, "method not allowed on /", MINOR)
def test_root_rejects_post(http):
    """The version resource is read-only: POST / answers 405."""
    resp = http.post("/", role=None, json={})
    resp.expect(405)
