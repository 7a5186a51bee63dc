"""User metadata of secrets: /v1/secrets/{id}/metadata and /metadata/{key}."""

from __future__ import annotations

import uuid

import pytest

from conformance.api import BLOCKER, CRITICAL, MINOR, NORMAL, labels
from conformance.conftest import ref_path
from harness.known_bugs import known_bug

FEATURE = "Secret metadata"


@pytest.fixture
def secret(res):
    return ref_path(res.secret())


@labels(FEATURE, "metadata lifecycle", BLOCKER)
def test_metadata_crud(http, secret):
    """Empty metadata is {"metadata": {}}; PUT replaces the whole set (201 {metadata_ref}, keys
    lowercased); POST adds one key (201 {key, value}, Location .../metadata/<key>); GET/PUT of one
    key 200 {key, value}; DELETE of a key 204; GET of the set reflects each step."""
    m = secret + "/metadata"
    assert http.get(m).ok(200) == {"metadata": {}}
    put = http.put(m, json={"metadata": {"Color": "red", "size": "L"}})
    assert put.ok(201) == {"metadata_ref": http.url(m).replace(http.node_url(), put.json["metadata_ref"].split("/v1/")[0])}
    assert http.get(m).ok(200) == {"metadata": {"color": "red", "size": "L"}}
    post = http.post(m, json={"key": "Shape", "value": "round"})
    assert post.ok(201) == {"key": "shape", "value": "round"}
    assert post.headers["Location"].endswith(secret + "/metadata/shape"), post.describe()
    assert http.get(m + "/shape").ok(200) == {"key": "shape", "value": "round"}
    assert http.put(m + "/shape", json={"key": "shape", "value": "square"}).ok(200) == {"key": "shape",
                                                                                      "value": "square"}
    assert http.get(m).ok(200) == {"metadata": {"color": "red", "size": "L", "shape": "square"}}
    resp = http.delete(m + "/size")
    resp.expect(204)
    assert resp.content == b""
    assert http.get(m).ok(200) == {"metadata": {"color": "red", "shape": "square"}}
    assert http.put(m, json={"metadata": {"only": "this"}}).status == 201
    assert http.get(m).ok(200) == {"metadata": {"only": "this"}}
    assert http.put(m, json={"metadata": {}}).status == 201
    assert http.get(m).ok(200) == {"metadata": {}}


@labels(FEATURE, "metadata lifecycle", CRITICAL)
def test_post_existing_key_is_409(http, secret):
    """POST of a key that already exists is 409 'Conflict. Key in request is already in the
    secret metadata'; the value is unchanged. Keys compare lowercased."""
    m = secret + "/metadata"
    http.post(m, json={"key": "dup", "value": "first"}).ok(201)
    http.post(m, json={"key": "DUP", "value": "second"}).error(
        409, "Conflict. Key in request is already in the secret metadata", title="Conflict")
    assert http.get(m + "/dup").ok(200) == {"key": "dup", "value": "first"}


@pytest.mark.parametrize("method", ["GET", "PUT"])
@labels(FEATURE, "missing key", CRITICAL)
def test_missing_key_is_404(http, secret, method):
    """GET or PUT of a key that is not set is 404 'Secret metadata not found.'"""
    resp = http.request(method, secret + "/metadata/absent",
                        json={"key": "absent", "value": "v"} if method == "PUT" else None)
    resp.error(404, "Secret metadata not found.")
    assert http.get(secret + "/metadata").ok(200) == {"metadata": {}}


@labels(FEATURE, "missing key", NORMAL)
def test_delete_missing_key_is_204(http, secret):
    """DELETE of a key that is not set is 204 too (deletion is idempotent; the set is unchanged)."""
    http.put(secret + "/metadata", json={"metadata": {"keep": "me"}}).ok(201)
    http.delete(secret + "/metadata/absent").expect(204)
    assert http.get(secret + "/metadata").ok(200) == {"metadata": {"keep": "me"}}


@labels(FEATURE, "keys are lowercase", NORMAL)
def test_keys_are_lowercase(http, secret):
    """Keys are stored lowercased: a key read back with upper-case letters in the URL is 404."""
    http.post(secret + "/metadata", json={"key": "MixedCase", "value": "v"}).ok(201)
    assert http.get(secret + "/metadata/mixedcase").ok(200) == {"key": "mixedcase", "value": "v"}
    http.get(secret + "/metadata/MixedCase").error(404, "Secret metadata not found.")


@labels(FEATURE, "PUT of one key", NORMAL)
def test_put_key_mismatch_is_409(http, secret):
    """PUT .../metadata/<key> whose body names another key is 409; nothing changes."""
    http.post(secret + "/metadata", json={"key": "url-key", "value": "v"}).ok(201)
    http.put(secret + "/metadata/url-key", json={"key": "body-key", "value": "x"}).error(
        409, "Key in request data does not match key in the", title="Conflict")
    assert http.get(secret + "/metadata").ok(200) == {"metadata": {"url-key": "v"}}


@known_bug("metadata-409-message-truncated")
@labels(FEATURE, "PUT of one key", MINOR)
def test_put_key_mismatch_message_is_complete(http, secret):
    """The 409 for a key mismatch says which keys: '... does not match key in the request url.'"""
    http.post(secret + "/metadata", json={"key": "url-key", "value": "v"}).ok(201)
    http.put(secret + "/metadata/url-key", json={"key": "body-key", "value": "x"}).error(
        409, "Key in request data does not match key in the request url")


INVALID_METADATA = {
    "space-in-key": ({"metadata": {"bad key": "v"}}, "Invalid Key. Key must be URL safe."),
    "slash-in-key": ({"metadata": {"a/b": "v"}}, "Invalid Key. Key must be URL safe."),
    "unicode-key": ({"metadata": {"cl\u00e9": "v"}}, "Invalid Key. Key must be URL safe."),
    "int-value": ({"metadata": {"k": 1}}, "Invalid Metadata. Keys and Values must be Strings."),
    "null-value": ({"metadata": {"k": None}}, "Invalid Metadata. Keys and Values must be Strings."),
    "missing-metadata": ({"meta": {}}, "'metadata' is a required property"),
    "metadata-not-object": ({"metadata": ["a"]}, "is not of type 'object'"),
}


@pytest.mark.parametrize("case", list(INVALID_METADATA))
@labels(FEATURE, "validation", NORMAL)
def test_invalid_metadata_put_is_400(http, secret, case):
    """PUT .../metadata with a key that is not URL-safe ([A-Za-z0-9_-]), a non-string value, or a
    body without a 'metadata' object is 400; the existing metadata is kept."""
    http.put(secret + "/metadata", json={"metadata": {"kept": "yes"}}).ok(201)
    body, reason = INVALID_METADATA[case]
    http.put(secret + "/metadata", json=body).error(400, reason)
    assert http.get(secret + "/metadata").ok(200) == {"metadata": {"kept": "yes"}}


INVALID_METADATUM = {
    "bad-key": ({"key": "bad key!", "value": "v"}, "Invalid Key. Key must be URL safe."),
    "missing-value": ({"key": "k"}, "'value' is a required property"),
    "missing-key": ({"value": "v"}, "'key' is a required property"),
    "extra-field": ({"key": "k", "value": "v", "extra": 1}, "Additional properties are not allowed"),
    "value-too-long": ({"key": "k", "value": "v" * 256}, "is too long"),
    "key-too-long": ({"key": "k" * 256, "value": "v"}, "is too long"),
}


@pytest.mark.parametrize("case", list(INVALID_METADATUM))
@labels(FEATURE, "validation", NORMAL)
def test_invalid_metadatum_post_is_400(http, secret, case):
    """POST .../metadata needs exactly {key, value}, strings of at most 255 characters, a URL-safe
    key: otherwise 400 and nothing is added."""
    body, reason = INVALID_METADATUM[case]
    http.post(secret + "/metadata", json=body).error(400, reason)
    assert http.get(secret + "/metadata").ok(200) == {"metadata": {}}


@labels(FEATURE, "methods", MINOR)
def test_post_on_a_key_is_405(http, secret):
    """POST on .../metadata/<key> is 405 (keys are created by POST on .../metadata)."""
    http.post(secret + "/metadata/k", json={"key": "k", "value": "v"}).expect(405)


@pytest.mark.parametrize("method", ["GET", "PUT", "POST"])
@labels(FEATURE, "missing secret", NORMAL)
def test_metadata_of_missing_secret_is_404(http, method):
    """Metadata of a secret that does not exist is 404 'Secret not found.'"""
    body = {"metadata": {"k": "v"}} if method == "PUT" else {"key": "k", "value": "v"} if method == "POST" else None
    http.request(method, f"/v1/secrets/{uuid.uuid4()}/metadata", json=body).error(404, "Secret not found.")


@labels(FEATURE, "metadata and payload are independent", NORMAL)
def test_metadata_on_metadata_only_secret_and_after_payload(http, res):
    """Metadata can be set on a secret without payload and survives the two-step PUT of the payload."""
    ref = ref_path(res.secret(metadata_only=True))
    http.put(ref + "/metadata", json={"metadata": {"stage": "empty"}}).ok(201)
    http.put(ref, data=b"late payload", headers={"Content-Type": "text/plain"}).expect(204)
    assert http.get(ref + "/metadata").ok(200) == {"metadata": {"stage": "empty"}}
    http.payload(ref, accept="text/plain").payload_is(b"late payload")


@pytest.mark.parametrize("operation", ["get", "put", "post", "delete"])
@labels(FEATURE, "project isolation", CRITICAL)
def test_other_project_cannot_use_metadata(http, secret, operation):
    """A member of another project gets 403 on every metadata operation; nothing changes."""
    m = secret + "/metadata"
    http.put(m, json={"metadata": {"owner": "project-a"}}).ok(201)
    caller = "other-member"
    if operation == "get":
        resp = http.get(m, role=caller)
    elif operation == "put":
        resp = http.put(m, role=caller, json={"metadata": {"owner": "project-b"}})
    elif operation == "post":
        resp = http.post(m, role=caller, json={"key": "intruder", "value": "x"})
    else:
        resp = http.delete(m + "/owner", role=caller)
    resp.denied()
    assert http.get(m).ok(200) == {"metadata": {"owner": "project-a"}}
