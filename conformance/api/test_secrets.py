"""Secrets: create (one-step and two-step), read (metadata vs payload), content types and
encodings, validation, size limits, expiration and deletion."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import time
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from conformance.api import BLOCKER, CRITICAL, MINOR, NORMAL, labels
from conformance.conftest import ref_path
from harness.known_bugs import known_bug

FEATURE = "Secrets"

# -- key material for the typed secrets (made once per test session) ---------------------------
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_PRIV_PEM = _KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
_PRIV_DER = _KEY.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
_PUB_PEM = _KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
_PUB_DER = _KEY.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conformance.example")])
_NOW = dt.datetime.now(dt.UTC)
_CERT = (x509.CertificateBuilder().subject_name(_NAME).issuer_name(_NAME).public_key(_KEY.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(_NOW)
         .not_valid_after(_NOW + dt.timedelta(days=30)).sign(_KEY, hashes.SHA256()))
_CERT_PEM = _CERT.public_bytes(serialization.Encoding.PEM)
_CERT_DER = _CERT.public_bytes(serialization.Encoding.DER)


# id: (secret_type, payload_content_type, payload_content_encoding, payload bytes, extra fields,
#      stored content type (content_types.default))
SECRET_CASES = {
    "symmetric-octet-base64": ("symmetric", "application/octet-stream", "base64", os.urandom(32),
                               {"algorithm": "aes", "bit_length": 256, "mode": "cbc"}, "application/octet-stream"),
    "symmetric-text": ("symmetric", "text/plain", None, uuid.uuid4().hex.encode(),
                       {"algorithm": "aes", "bit_length": 128}, "text/plain"),
    "public-pem-text": ("public", "text/plain", None, _PUB_PEM.strip(), {"algorithm": "rsa", "bit_length": 2048},
                        "text/plain"),
    "public-der-octet": ("public", "application/octet-stream", "base64", _PUB_DER,
                         {"algorithm": "rsa", "bit_length": 2048}, "application/octet-stream"),
    "private-pem-text": ("private", "text/plain", None, _PRIV_PEM.strip(), {"algorithm": "rsa", "bit_length": 2048},
                         "text/plain"),
    "private-der-pkcs8": ("private", "application/pkcs8", "base64", _PRIV_DER, {"algorithm": "rsa", "bit_length": 2048},
                          "application/pkcs8"),
    "private-der-octet": ("private", "application/octet-stream", "base64", _PRIV_DER, {},
                          "application/octet-stream"),
    "passphrase-text": ("passphrase", "text/plain", None, b"correct horse battery staple", {}, "text/plain"),
    "passphrase-charset-utf8": ("passphrase", "text/plain; charset=utf-8", None,
                                "p\u00e4ssw\u00f6rd-\u20ac-\u5bc6\u7801".encode(), {}, "text/plain"),
    "certificate-pem-text": ("certificate", "text/plain", None, _CERT_PEM.strip(), {}, "text/plain"),
    "certificate-der-octet": ("certificate", "application/octet-stream", "base64", _CERT_DER, {},
                              "application/octet-stream"),
    "opaque-text": ("opaque", "text/plain", None, b"opaque text payload", {}, "text/plain"),
    "opaque-charset-nospace": ("opaque", "text/plain;charset=utf-8", None, "\u043a\u043b\u044e\u0447".encode(), {},
                               "text/plain"),
    "opaque-octet-binary": ("opaque", "application/octet-stream", "base64", b"\x00\x01\xfe\xff" + os.urandom(60), {},
                            "application/octet-stream"),
    "opaque-pkcs8": ("opaque", "application/pkcs8", "base64", os.urandom(48), {}, "application/pkcs8"),
    "default-type-text": (None, "text/plain", None, b"no secret_type given", {}, "text/plain"),
}


def _body_for(case_id: str, name: str) -> tuple[dict, bytes, str]:
    secret_type, ctype, encoding, data, extra, stored = SECRET_CASES[case_id]
    body = {"name": name, "payload_content_type": ctype, **extra}
    if secret_type:
        body["secret_type"] = secret_type
    if encoding:
        body["payload_content_encoding"] = encoding
        body["payload"] = base64.b64encode(data).decode()
    else:
        body["payload"] = data.decode("utf-8")
    return body, data, stored


def assert_secret_doc(resp, doc: dict, **expected) -> None:
    """The fields every secret document has, and the expected values of some."""
    for key in ("created", "updated", "status", "name", "secret_type", "expiration", "algorithm",
                "bit_length", "mode", "creator_id", "secret_ref"):
        assert key in doc, f"'{key}' missing; {resp.describe()}"
    assert doc["status"] == "ACTIVE", resp.describe()
    dt.datetime.fromisoformat(doc["created"])
    for key, value in expected.items():
        assert doc[key] == value, f"{key}: expected {value!r}, got {doc.get(key)!r}; {resp.describe()}"


# -- one-step create, every type and content type --------------------------------------------
def _create_case(http, res, caps, case: str, name: str):
    """POST the case; returns (ref, expected read-back bytes, stored content type) or None when the
    backend refuses the case (asserting the refusal recorded in capabilities.yaml)."""
    body, data, stored = _body_for(case, name)
    outcome = caps.secret_payload(case)
    if outcome["status"] != 201:
        resp = http.post("/v1/secrets", json=body)
        if resp.status == 201:
            res.track("secret", resp.json["secret_ref"])
        resp.error(outcome["status"], outcome["description"])
        return None
    ref = res.secret(**body)
    if outcome["read_back"] == "pem-trailing-newline":
        data += b"\n"
    return ref, data, stored


@pytest.mark.parametrize("case", list(SECRET_CASES))
@labels(FEATURE, "one-step create and read back", BLOCKER)
def test_create_and_read_back(http, res, caps, uname, case):
    """POST /v1/secrets with a payload answers 201 {secret_ref} with Location = secret_ref; the
    metadata (GET, Accept JSON) has the type, algorithm, bit_length, mode, creator and
    content_types.default = the normalised payload content type; GET .../payload with that Accept
    returns exactly the stored bytes through every API node. Backends that store typed objects
    (KMIP) refuse or transform some cases as capabilities.yaml records."""
    name = uname(case)
    body, _, _ = _body_for(case, name)
    made = _create_case(http, res, caps, case, name)
    if made is None:
        return
    ref, data, stored = made
    resp = http.get(ref_path(ref))
    doc = resp.ok(200)
    assert_secret_doc(resp, doc, name=name, secret_type=body.get("secret_type", "opaque"),
                      algorithm=body.get("algorithm"), bit_length=body.get("bit_length"), mode=body.get("mode"),
                      creator_id=http.user_id(http.writer), expiration=None, secret_ref=ref)
    assert doc["content_types"] == {"default": stored}, resp.describe()
    for node in range(len(http.target.nodes)):
        payload = http.payload(ref_path(ref), accept=stored, node=node)
        payload.payload_is(data, f"payload read through node {node + 1}")
        assert payload.headers["Content-Type"].split(";")[0] == stored, payload.describe()


@pytest.mark.parametrize("case", list(SECRET_CASES))
@labels(FEATURE, "payload through the deprecated GET /v1/secrets/{id}", NORMAL)
def test_payload_through_secret_resource_with_non_json_accept(http, res, caps, uname, case):
    """GET /v1/secrets/{id} with a non-JSON Accept (the stored content type) returns the payload
    (deprecated form of /payload, enforced as secret:decrypt) — the same bytes as /payload."""
    made = _create_case(http, res, caps, case, uname(case))
    if made is None:
        return
    ref, data, stored = made
    resp = http.get(ref_path(ref), headers={"Accept": stored}, secret_body=True)
    resp.payload_is(data)
    assert resp.headers["Content-Type"].split(";")[0] == stored, resp.describe()


@pytest.mark.parametrize("accept,is_metadata", [("application/json", True), ("*/*", True),
                                                ("text/plain", False), ("application/octet-stream", False)])
@labels(FEATURE, "metadata vs payload by Accept", CRITICAL)
def test_accept_selects_metadata_or_payload(http, res, accept, is_metadata):
    """On GET /v1/secrets/{id}, Accept application/json or */* gives the JSON metadata; any other
    Accept gives the payload in that content type."""
    data = uuid.uuid4().hex
    ref = res.secret(payload=data, payload_content_type="text/plain")
    resp = http.get(ref_path(ref), headers={"Accept": accept}, secret_body=not is_metadata)
    if is_metadata:
        doc = resp.ok(200)
        assert isinstance(doc, dict) and doc["secret_ref"] == ref, resp.describe()
        assert "payload" not in doc, resp.describe()
    else:
        resp.payload_is(data.encode())
        assert resp.headers["Content-Type"].split(";")[0] == accept, resp.describe()


# stored type, Accept on /payload, expected status
ACCEPT_MATRIX = [
    ("text", "text/plain", 200),
    ("text", "text/plain;charset=utf-8", 200),
    ("text", "application/octet-stream", 200),
    ("text", "application/pkcs8", 200),
    ("text", "application/json", 406),
    ("text", "text/html", 406),
    ("text", "application/xml", 406),
    ("binary", "application/octet-stream", 200),
    ("binary", "application/pkcs8", 200),
    ("binary", "text/plain", 406),
    ("binary", "application/json", 406),
    ("binary", "image/png", 406),
]


@pytest.mark.parametrize("stored,accept,status", ACCEPT_MATRIX,
                         ids=[f"{s}-as-{a.replace('/', '_')}" for s, a, _ in ACCEPT_MATRIX])
@labels(FEATURE, "payload Accept negotiation (406)", CRITICAL)
def test_payload_accept_negotiation(http, res, stored, accept, status):
    """GET .../payload serves the stored bytes for any supported Accept (text/plain only when the
    bytes are UTF-8); an unsupported Accept (JSON, HTML, XML, image) or text/plain for non-UTF-8
    binary data is 406 'Secret payload retrieval issue seen - Wrong payload content-type.'"""
    if stored == "text":
        data = b"text payload " + uuid.uuid4().hex.encode()
        ref = res.secret(payload=data.decode(), payload_content_type="text/plain")
    else:
        data = b"\xff\xfe\x00" + os.urandom(29)
        ref = res.secret(payload=base64.b64encode(data).decode(), payload_content_type="application/octet-stream",
                         payload_content_encoding="base64")
    resp = http.payload(ref_path(ref), accept=accept)
    if status == 200:
        resp.payload_is(data)
        assert resp.headers["Content-Type"].split(";")[0] == accept.split(";")[0], resp.describe()
    else:
        resp.error(406, "Secret payload retrieval issue seen - Wrong payload content-type.", title="Not Acceptable")


@labels(FEATURE, "payload with Accept */*", MINOR)
def test_payload_with_wildcard_accept_returns_the_stored_bytes(http, res):
    """GET .../payload with Accept */* (what most HTTP clients send by default) returns the stored
    bytes, decoded as the stored content type."""
    data = b"wildcard " + uuid.uuid4().hex.encode()
    ref = res.secret(payload=data.decode(), payload_content_type="text/plain")
    http.payload(ref_path(ref), accept="*/*").payload_is(data)


@known_bug("payload-wildcard-content-type")
@labels(FEATURE, "payload with Accept */*", MINOR)
def test_payload_with_wildcard_accept_has_the_stored_content_type(http, res):
    """With Accept */*, the payload response should say what it is: Content-Type text/plain for a
    text/plain secret (RFC 9110: Content-Type is a media type, not a range)."""
    ref = res.secret(payload="typed", payload_content_type="text/plain")
    resp = http.payload(ref_path(ref), accept="*/*")
    resp.expect(200)
    assert resp.headers.get("Content-Type", "").split(";")[0] == "text/plain", (
        f"Content-Type is {resp.headers.get('Content-Type')!r}")


@labels(FEATURE, "payload whitespace", MINOR)
def test_text_payload_is_stripped(http, res):
    """Barbican strips leading/trailing whitespace from every JSON string it loads
    (api.strip_whitespace), payloads included: '  abc\\n' is stored as 'abc'."""
    core = uuid.uuid4().hex
    ref = res.secret(payload=f"  {core} \n", payload_content_type="text/plain")
    http.payload(ref_path(ref), accept="text/plain").payload_is(core.encode())


@labels(FEATURE, "metadata-only secret", CRITICAL)
def test_metadata_only_secret(http, res, uname):
    """POST without payload creates a metadata-only secret: 201; its document has no
    content_types; GET .../payload is 404 'Not Found. Sorry but your secret has no payload.'"""
    name = uname()
    ref = res.secret(metadata_only=True, name=name, secret_type="symmetric", algorithm="aes", bit_length=256,
                     mode="cbc")
    resp = http.get(ref_path(ref))
    doc = resp.ok(200)
    assert_secret_doc(resp, doc, name=name, secret_type="symmetric", algorithm="aes", bit_length=256, mode="cbc")
    assert "content_types" not in doc, resp.describe()
    http.payload(ref_path(ref)).error(404, "Sorry but your secret has no payload")


@pytest.mark.parametrize("body,name", [({}, None), ({"name": None}, None), ({"name": "  padded  "}, "padded")],
                         ids=["empty-body", "null-name", "padded-name"])
@labels(FEATURE, "defaults of a new secret", NORMAL)
def test_secret_defaults(http, res, body, name):
    """An empty body is a valid secret: secret_type 'opaque', name null, no algorithm/bit_length/
    mode/expiration; a name is stripped of surrounding whitespace."""
    resp = http.post("/v1/secrets", json=body)
    ref = res.track("secret", resp.ok(201)["secret_ref"])
    get = http.get(ref_path(ref))
    assert_secret_doc(get, get.ok(200), name=name, secret_type="opaque", algorithm=None, bit_length=None, mode=None,
                      expiration=None)


# -- two-step upload ---------------------------------------------------------------------------
TWO_STEP = {
    "text-plain": ({"Content-Type": "text/plain"}, b"two-step text", b"two-step text", "text/plain"),
    "text-plain-charset": ({"Content-Type": "text/plain; charset=utf-8"}, "z\u00fcrich".encode(), "z\u00fcrich".encode(),
                           "text/plain"),
    "octet-raw": ({"Content-Type": "application/octet-stream"}, b"\x00\x10\xffraw", b"\x00\x10\xffraw",
                  "application/octet-stream"),
    "octet-base64": ({"Content-Type": "application/octet-stream", "Content-Encoding": "base64"},
                     base64.b64encode(b"\x01\x02\xfeb64"), b"\x01\x02\xfeb64", "application/octet-stream"),
    "text-ignores-base64-encoding": ({"Content-Type": "text/plain", "Content-Encoding": "base64"}, b"notdecoded",
                                     b"notdecoded", "text/plain"),
}


@pytest.mark.parametrize("mode", list(TWO_STEP))
@labels(FEATURE, "two-step upload (PUT)", BLOCKER)
def test_two_step_upload(http, res, mode):
    """POST a metadata-only secret, then PUT the payload: 204 with no body; the secret then has
    content_types and the payload reads back; a second PUT is 409 'Secret already has data,
    cannot modify it.' (text/plain ignores Content-Encoding: base64)."""
    headers, sent, expected, stored = TWO_STEP[mode]
    ref = res.secret(metadata_only=True)
    put = http.put(ref_path(ref), data=sent, headers=headers)
    put.expect(204)
    assert put.content == b"", put.describe()
    doc = http.get(ref_path(ref)).ok(200)
    assert doc["content_types"] == {"default": stored}
    http.payload(ref_path(ref), accept=stored).payload_is(expected)
    again = http.put(ref_path(ref), data=sent, headers=headers)
    again.error(409, "Secret already has data, cannot modify it.", title="Conflict")


@labels(FEATURE, "two-step upload (PUT)", CRITICAL)
def test_put_on_secret_created_with_payload_is_409(http, res):
    """PUT on a secret that was created with a payload (one-step) is 409."""
    ref = res.secret()
    http.put(ref_path(ref), data=b"more", headers={"Content-Type": "text/plain"}).error(
        409, "Secret already has data, cannot modify it.")


@pytest.mark.parametrize("ctype", ["application/json", "application/xml", "image/png", None])
@labels(FEATURE, "two-step upload (PUT)", NORMAL)
def test_put_with_unsupported_content_type_is_415(http, res, ctype):
    """PUT accepts only text/plain and application/octet-stream bodies: anything else (or no
    Content-Type) is 415 listing the expected types."""
    ref = res.secret(metadata_only=True)
    headers = {"Content-Type": ctype} if ctype else {}
    resp = http.put(ref_path(ref), data=b"payload", headers=headers)
    resp.error(415, "Unexpected content type. Expected content types are: ['application/octet-stream', 'text/plain']",
               title="Unsupported Media Type")
    http.payload(ref_path(ref)).error(404, "has no payload")


@labels(FEATURE, "two-step upload (PUT)", NORMAL)
def test_put_empty_payload_is_400(http, res):
    """PUT with an empty body is 400 'No data supplied to process.'; the secret stays empty."""
    ref = res.secret(metadata_only=True)
    http.put(ref_path(ref), data=b"", headers={"Content-Type": "text/plain"}).error(
        400, "Secret update issue seen - No data supplied to process.")
    http.payload(ref_path(ref)).error(404, "has no payload")


@labels(FEATURE, "two-step upload (PUT)", NORMAL)
def test_put_binary_with_unknown_encoding_is_400(http, res):
    """PUT application/octet-stream with Content-Encoding other than base64 (gzip) is 400."""
    ref = res.secret(metadata_only=True)
    http.put(ref_path(ref), data=b"abc", headers={"Content-Type": "application/octet-stream",
                                                 "Content-Encoding": "gzip"}).error(
        400, "content-encoding of 'base64'")


@pytest.mark.parametrize("size,status", [(20000, 204), (20001, 413)])
@labels(FEATURE, "payload size limit", CRITICAL)
def test_put_size_limit(http, res, caps, size, status):
    """PUT payloads are limited to max_allowed_secret_in_bytes (20000): 20000 bytes is 204, one
    more byte is 413 'Provided information too large to process.'"""
    limit = caps.server("max_secret_bytes")["value"]
    size = size - 20000 + limit
    ref = res.secret(metadata_only=True)
    data = os.urandom(size)
    resp = http.put(ref_path(ref), data=data, headers={"Content-Type": "application/octet-stream"})
    if status == 204:
        resp.expect(204)
        http.payload(ref_path(ref)).payload_is(data)
    else:
        resp.error(413, "Provided information too large to process", title="Request Entity Too Large")


# -- validation --------------------------------------------------------------------------------
FUTURE = "2100-01-01T00:00:00Z"
INVALID_BODIES = {
    "past-expiration": ({"expiration": "2000-01-01T00:00:00Z"}, "'expiration' is before current time"),
    "bad-expiration": ({"expiration": "not-a-date"}, "Invalid date for 'expiration'"),
    "bad-secret-type": ({"secret_type": "bogus"}, ("'bogus' is not one of ['symmetric', 'passphrase', 'private', "
                                                   "'public', 'certificate', 'opaque']")),
    "bit-length-zero": ({"bit_length": 0}, "0 is less than the minimum of 1"),
    "bit-length-string": ({"bit_length": "x"}, "'x' is not of type 'integer'"),
    "bit-length-too-big": ({"bit_length": 32768}, "32768 is greater than the maximum of 32767"),
    "name-too-long": ({"name": "n" * 256}, "is too long. Invalid property: 'name'"),
    "name-not-string": ({"name": 5}, "5 is not of type 'string', 'null'"),
    "algorithm-too-long": ({"algorithm": "a" * 256}, "is too long. Invalid property: 'algorithm'"),
    "payload-without-content-type": ({"payload": "abc"},
                                     "If 'payload' is supplied, 'payload_content_type' must also be supplied"),
    "content-type-without-payload": ({"payload_content_type": "text/plain"},
                                     "payload must be provided when payload_content_type is specified"),
    "unsupported-content-type": ({"payload": "abc", "payload_content_type": "text/foo"},
                                 ("payload_content_type is not one of ['text/plain', 'text/plain;charset=utf-8', "
                                  "'text/plain; charset=utf-8', 'application/octet-stream', 'application/pkcs8']")),
    "unsupported-charset": ({"payload": "abc", "payload_content_type": "text/plain; charset=latin-1"},
                            "payload_content_type is not one of"),
    "aes-content-type": ({"payload": "YWJj", "payload_content_type": "application/aes",
                          "payload_content_encoding": "base64"}, "payload_content_type is not one of"),
    "octet-without-encoding": ({"payload": "abc", "payload_content_type": "application/octet-stream"},
                               "payload_content_encoding is not one of ['base64', 'binary']"),
    "text-with-base64-encoding": ({"payload": "abc", "payload_content_type": "text/plain",
                                   "payload_content_encoding": "base64"}, "payload_content_encoding is not one of None"),
    "binary-encoding": ({"payload": "YWJj", "payload_content_type": "application/octet-stream",
                         "payload_content_encoding": "binary"}, "'binary' is not one of ['base64']"),
    "empty-payload": ({"payload": "", "payload_content_type": "text/plain"}, "If 'payload' specified, must be non empty"),
    "whitespace-payload": ({"payload": "   ", "payload_content_type": "text/plain"},
                           "If 'payload' specified, must be non empty"),
    "payload-not-string": ({"payload": 12, "payload_content_type": "text/plain"}, "12 is not of type 'string'"),
    "transport-key-needed-not-bool-string": ({"transport_key_needed": "yes"}, "'yes' is not one of ['true', 'false']"),
    "not-an-object": ([1, 2], "[1, 2] is not of type 'object'"),
}


@pytest.mark.parametrize("case", list(INVALID_BODIES))
@labels(FEATURE, "create validation (400)", CRITICAL)
def test_invalid_secret_is_400(http, res, case):
    """POST /v1/secrets with a body that breaks the Secret schema or its rules is 400 with
    'Provided object does not match schema 'Secret': <reason>' and creates nothing."""
    body, reason = INVALID_BODIES[case]
    if isinstance(body, dict):
        body = {"name": f"cf-invalid-{uuid.uuid4().hex[:8]}", **body} if "name" not in body else body
    resp = http.post("/v1/secrets", json=body)
    if resp.status == 201:  # do not leak it if Barbican accepted it
        res.track("secret", resp.json["secret_ref"])
    err = resp.error(400, reason, title="Bad Request")
    assert err["description"].startswith("Provided object does not match schema 'Secret'"), resp.describe()
    if isinstance(body, dict) and body.get("name"):
        listed = http.get("/v1/secrets", params={"name": body["name"]}).ok(200)
        assert listed == {"secrets": [], "total": 0}


@labels(FEATURE, "create validation (400)", NORMAL)
def test_malformed_json_is_400(http):
    """A body that is not JSON is 400 'Malformed JSON'."""
    http.post("/v1/secrets", data=b"{not json", headers={"Content-Type": "application/json"}).error(
        400, "Malformed JSON")


@pytest.mark.parametrize("ctype", ["text/plain", "application/xml", "application/x-www-form-urlencoded", None])
@labels(FEATURE, "request content type (415)", CRITICAL)
def test_create_with_non_json_content_type_is_415(http, ctype):
    """POST /v1/secrets accepts only application/json: any other request Content-Type (or none)
    is 415 'Unexpected content type. Expected content types are: ['application/json']'."""
    headers = {"Content-Type": ctype} if ctype else {}
    http.post("/v1/secrets", data=json.dumps({"name": "x"}).encode(), headers=headers).error(
        415, "Unexpected content type. Expected content types are: ['application/json']",
        title="Unsupported Media Type")


@pytest.mark.parametrize("bad", ["###", "ab!cd", "%%%%"])
@pytest.mark.parametrize("step", ["one-step", "two-step"])
@known_bug("base64-payload-not-validated")
@labels(FEATURE, "create validation (400)", NORMAL)
def test_invalid_base64_payload_is_400(http, res, bad, step):
    """A payload declared base64 that is not base64 should be 400 (one-step: 'Invalid payload for
    payload_content_encoding', validators.NewSecretValidator; two-step PUT with Content-Encoding:
    base64 likewise) and nothing should be stored."""
    if step == "one-step":
        resp = http.post("/v1/secrets", json={"name": "cf-bad-b64", "payload": bad,
                                              "payload_content_type": "application/octet-stream",
                                              "payload_content_encoding": "base64"})
        ref = res.track("secret", resp.json["secret_ref"]) if resp.status == 201 else None
    else:
        ref = res.secret(metadata_only=True)
        resp = http.put(ref_path(ref), data=bad.encode(), headers={"Content-Type": "application/octet-stream",
                                                                     "Content-Encoding": "base64"})
    if resp.status in (201, 204):
        got = http.payload(ref_path(ref))
        pytest.fail(f"accepted: {resp.method} -> {resp.status}, GET payload -> {got.status} "
                    f"with {len(got.content)} bytes")
    resp.error(400, "Invalid payload" if step == "one-step" else "base64")


# -- size limits -------------------------------------------------------------------------------
def _post_raw(http, body: dict):
    """POST with the JSON written as UTF-8 (not \\u escapes), so the body is what we count."""
    return http.post("/v1/secrets", data=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                     headers={"Content-Type": "application/json"})


SIZE_CASES = {
    # id: (payload string, content type, encoding, expected status)
    "text-at-limit": ("x" * 20000, "text/plain", None, 201),
    "text-over-limit": ("x" * 20001, "text/plain", None, 413),
    "utf8-at-limit": ("\u20ac" * 6666 + "xx", "text/plain", None, 201),   # 19998 + 2 bytes
    "utf8-over-limit": ("\u20ac" * 6667, "text/plain", None, 413),         # 20001 bytes, 6667 characters
    "base64-at-limit": (base64.b64encode(b"\x01" * 15000).decode(), "application/octet-stream", "base64", 201),
    "base64-over-limit": (base64.b64encode(b"\x01" * 15003).decode(), "application/octet-stream", "base64", 413),
}


@pytest.mark.parametrize("case", list(SIZE_CASES))
@labels(FEATURE, "payload size limit (413)", CRITICAL)
def test_payload_size_limit(http, res, caps, case):
    """The payload limit (max_allowed_secret_in_bytes, 20000) counts the payload string as sent,
    in UTF-8 bytes: 20000 bytes is accepted, 20001 is 413 'Provided information too large to
    process'; for base64 payloads the encoded text counts (15000 raw bytes fit, 15003 do not)."""
    assert caps.server("max_secret_bytes")["value"] == 20000, "size cases are written for the default limit"
    payload, ctype, encoding, status = SIZE_CASES[case]
    body = {"name": f"cf-size-{case}", "payload": payload, "payload_content_type": ctype}
    if encoding:
        body["payload_content_encoding"] = encoding
    resp = _post_raw(http, body)
    if status == 201:
        ref = res.track("secret", resp.ok(201)["secret_ref"])
        expected = base64.b64decode(payload) if encoding else payload.encode("utf-8")
        http.payload(ref_path(ref), accept=ctype).payload_is(expected)
    else:
        if resp.status == 201:
            res.track("secret", resp.json["secret_ref"])
        resp.error(413, "Provided information too large to process", title="Request Entity Too Large")


@labels(FEATURE, "request size limit", NORMAL)
def test_request_over_max_request_size_is_400(http, res, caps):
    """A JSON body longer than max_allowed_request_size_in_bytes (25000) is cut when read, so it is
    answered 400 'Malformed JSON' (not 413) and nothing is created."""
    limit = caps.server("max_request_bytes")["value"]
    payload = base64.b64encode(b"\x02" * (limit * 3 // 4 + 100)).decode()
    resp = http.post("/v1/secrets", json={"name": "cf-too-big-request", "payload": payload,
                                          "payload_content_type": "application/octet-stream",
                                          "payload_content_encoding": "base64"})
    if resp.status == 201:
        res.track("secret", resp.json["secret_ref"])
    resp.error(400, "Malformed JSON")


# -- expiration --------------------------------------------------------------------------------
@pytest.mark.parametrize("given,stored", [
    ("2100-01-01T00:00:00Z", "2100-01-01T00:00:00"),
    ("2100-01-01T00:00:00+02:00", "2099-12-31T22:00:00"),
    ("2100-01-01T00:00:00-05:30", "2100-01-01T05:30:00"),
    ("2100-01-01T00:00:00", "2100-01-01T00:00:00"),
    ("2100-01-01T00:00:00.123456Z", "2100-01-01T00:00:00"),
    ("2100-01-01", "2100-01-01T00:00:00"),
])
@labels(FEATURE, "expiration", NORMAL)
def test_expiration_is_normalised_to_utc(http, res, given, stored):
    """An ISO-8601 expiration is stored in UTC without offset, to the second (offsets applied,
    fractions dropped, a date alone is midnight)."""
    ref = res.secret(expiration=given)
    assert http.get(ref_path(ref)).ok(200)["expiration"] == stored


@labels(FEATURE, "expiration", BLOCKER)
def test_expired_secret_is_404(http, res):
    """A secret with an expiration a few seconds ahead is readable (metadata 200, payload 200),
    and once the time has passed it is gone: metadata and payload 404 'Secret not found.', absent
    from the list, DELETE 404."""
    name = f"cf-expiring-{uuid.uuid4().hex[:8]}"
    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=3)
    ref = res.secret(name=name, payload="short-lived", payload_content_type="text/plain",
                     expiration=expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
    doc = http.get(ref_path(ref)).ok(200)
    assert doc["expiration"] == expires.strftime("%Y-%m-%dT%H:%M:%S")
    http.payload(ref_path(ref), accept="text/plain").payload_is(b"short-lived")
    assert http.get("/v1/secrets", params={"name": name}).ok(200)["total"] == 1
    deadline = time.monotonic() + 20
    while http.get(ref_path(ref)).status == 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    http.get(ref_path(ref)).error(404, "Secret not found.")
    http.payload(ref_path(ref)).error(404, "Secret not found.")
    assert http.get("/v1/secrets", params={"name": name}).ok(200) == {"secrets": [], "total": 0}
    http.delete(ref_path(ref)).error(404, "Secret not found.")


# -- delete ------------------------------------------------------------------------------------
@labels(FEATURE, "delete", BLOCKER)
def test_delete_secret(http, res):
    """DELETE /v1/secrets/{id} by its creator is 204 with no body; afterwards metadata, payload
    and a second DELETE are 404 'Secret not found.'"""
    ref = res.secret()
    resp = http.delete(ref_path(ref))
    resp.expect(204)
    assert resp.content == b"", resp.describe()
    http.get(ref_path(ref)).error(404, "Secret not found.")
    http.payload(ref_path(ref)).error(404, "Secret not found.")
    http.delete(ref_path(ref)).error(404, "Secret not found.")


# -- microversions -----------------------------------------------------------------------------
@pytest.mark.parametrize("microversion", [None, "1.0", "1.1", "1.2"])
@pytest.mark.parametrize("where", ["get", "list"])
@labels(FEATURE, "consumers field by microversion", NORMAL)
def test_consumers_field_by_microversion(http, res, caps, microversion, where):
    """The 'consumers' field of a secret (GET and list) exists from microversion 1.1; without a
    header (= 1.0) and at 1.0 it is absent."""
    if microversion and not caps.supports_microversion(microversion):
        pytest.skip(f"server max microversion {caps.max_microversion} < {microversion}")
    name = f"cf-mv-{uuid.uuid4().hex[:8]}"
    ref = res.secret(name=name)
    if where == "get":
        doc = http.get(ref_path(ref), microversion=microversion).ok(200)
    else:
        listed = http.get("/v1/secrets", params={"name": name}, microversion=microversion).ok(200)
        assert listed["total"] == 1
        (doc,) = listed["secrets"]
    min_mv = caps.server("consumers_field")["min_microversion"]
    if microversion and caps.supports_microversion(min_mv) and tuple(map(int, microversion.split("."))) >= tuple(
            map(int, min_mv.split("."))):
        assert doc["consumers"] == []
    else:
        assert "consumers" not in doc


# -- cross-project isolation ---------------------------------------------------------------------
@pytest.mark.parametrize("operation", ["get", "payload", "put", "delete"])
@labels(FEATURE, "project isolation", BLOCKER)
def test_other_project_cannot_touch_secret(http, res, operation):
    """A member of another project (no ACL) gets 403 on the metadata, the payload, PUT and DELETE
    of a secret, and the secret is unchanged afterwards."""
    ref = res.secret(metadata_only=operation == "put") if operation == "put" else res.secret(
        payload="isolated", payload_content_type="text/plain")
    path = ref_path(ref)
    caller = "other-member"
    if operation == "get":
        http.get(path, role=caller).denied("Secret retrieval")
    elif operation == "payload":
        http.payload(path, accept="text/plain", role=caller).denied("Secret payload retrieval")
    elif operation == "put":
        http.put(path, role=caller, data=b"x", headers={"Content-Type": "text/plain"}).denied("Secret update")
        http.payload(path).error(404, "has no payload")
    else:
        http.delete(path, role=caller).denied("Secret deletion")
    assert http.get(path).ok(200)["secret_ref"] == ref
    if operation != "put":
        http.payload(path, accept="text/plain").payload_is(b"isolated")
