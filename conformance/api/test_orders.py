"""Orders: key and asymmetric generation per backend capability, order lifecycle, validation."""

from __future__ import annotations

import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, rsa

from conformance.api import BLOCKER, CRITICAL, NORMAL, capabilities, labels
from conformance.conftest import ref_path
from harness.known_bugs import known_bug

FEATURE = "Orders"
KEY_SPECS = list(capabilities()["order_specs"]["key"])
ASYM_SPECS = list(capabilities()["order_specs"]["asymmetric"])


def _check_error(order: dict, outcome: dict) -> None:
    assert order["status"] == "ERROR", order
    assert order["error_status_code"] == outcome["error_status_code"], order
    assert order["error_reason"].startswith(outcome["error_reason"].rstrip(".")), order
    assert "secret_ref" not in order and "container_ref" not in order, order


@pytest.mark.parametrize("spec_id", KEY_SPECS)
@labels(FEATURE, "key orders per backend", BLOCKER)
def test_key_order(http, res, caps, spec_id):
    """POST /v1/orders {type: key} is 202 {order_ref} (Location); the order leaves PENDING and
    ends as capabilities.yaml says for the default store's backend: ACTIVE with a symmetric
    secret of that algorithm/bit_length/mode whose payload is bit_length/8 bytes, or ERROR with
    the recorded error_status_code/error_reason and no secret."""
    spec = caps.order_spec("key", spec_id)
    outcome = caps.order_outcome("key", spec_id)
    spec["payload_content_type"] = "application/octet-stream"
    oref = res.order("key", **spec)
    order = res.wait_order(oref)
    assert order["type"] == "key" and order["order_ref"] == oref, order
    assert {k: order["meta"][k] for k in ("algorithm", "bit_length")} == {
        "algorithm": spec["algorithm"], "bit_length": spec["bit_length"]}, order
    if outcome["status"] != "ACTIVE":
        _check_error(order, outcome)
        return
    assert order["status"] == "ACTIVE", f"{spec_id} on {caps.default_backend}: {order}"
    secret = http.get(ref_path(order["secret_ref"])).ok(200)
    assert secret["secret_type"] == "symmetric" and secret["algorithm"] == spec["algorithm"], secret
    assert secret["bit_length"] == spec["bit_length"] and secret["mode"] == spec.get("mode"), secret
    assert secret["name"] == order["meta"]["name"] and secret["content_types"] == {
        "default": "application/octet-stream"}, secret
    key_bytes = len(http.payload(ref_path(order["secret_ref"])).ok(200))  # only the length is shown
    assert key_bytes == spec["bit_length"] // 8


def _load_private(data: bytes, passphrase: bytes | None):
    try:
        return serialization.load_pem_private_key(data, password=passphrase)
    except ValueError:
        return serialization.load_der_private_key(data, password=passphrase)


def _load_public(data: bytes):
    try:
        return serialization.load_pem_public_key(data)
    except ValueError:
        return serialization.load_der_public_key(data)


@pytest.mark.parametrize("spec_id", ASYM_SPECS)
@labels(FEATURE, "asymmetric orders per backend", BLOCKER)
def test_asymmetric_order(http, res, caps, spec_id):
    """An asymmetric order ends as capabilities.yaml says for the backend: ACTIVE with an 'rsa'
    container holding private_key and public_key secrets that load as a matching key pair of the
    requested size (simple_crypto), or ERROR with the recorded code (p11_crypto has no asymmetric
    generation; PyKMIP 0.11 fails CreateKeyPair)."""
    spec = caps.order_spec("asymmetric", spec_id)
    outcome = caps.order_outcome("asymmetric", spec_id)
    oref = res.order("asymmetric", **spec)
    order = res.wait_order(oref)
    if outcome["status"] != "ACTIVE":
        _check_error(order, outcome)
        return
    assert order["status"] == "ACTIVE", f"{spec_id} on {caps.default_backend}: {order}"
    container = http.get(ref_path(order["container_ref"])).ok(200)
    # the container type is the algorithm ('rsa' or 'dsa'), although POST /v1/containers only
    # accepts generic/rsa/certificate
    assert container["type"] == spec["algorithm"], container
    refs = {r["name"]: r["secret_ref"] for r in container["secret_refs"]}
    assert set(refs) == {"private_key", "public_key"}, container
    priv_doc = http.get(ref_path(refs["private_key"])).ok(200)
    pub_doc = http.get(ref_path(refs["public_key"])).ok(200)
    assert (priv_doc["secret_type"], pub_doc["secret_type"]) == ("private", "public")
    private = _load_private(http.payload(ref_path(refs["private_key"])).ok(200), None)
    public = _load_public(http.payload(ref_path(refs["public_key"])).ok(200))
    cls = {"rsa": (rsa.RSAPrivateKey, rsa.RSAPublicKey), "dsa": (dsa.DSAPrivateKey, dsa.DSAPublicKey)}[spec["algorithm"]]
    assert isinstance(private, cls[0]) and isinstance(public, cls[1])
    assert private.key_size == spec["bit_length"]
    assert private.public_key().public_numbers() == public.public_numbers()


@labels(FEATURE, "asymmetric orders per backend", CRITICAL)
def test_asymmetric_order_with_passphrase(http, res, caps):
    """An rsa order with a passphrase gives (where asymmetric generation is supported) a container
    with private_key, public_key and private_key_passphrase; the private key only loads with it."""
    outcome = caps.asymmetric_with_passphrase()
    passphrase = f"pw-{uuid.uuid4().hex}"
    order = res.wait_order(res.order("asymmetric", algorithm="rsa", bit_length=2048, passphrase=passphrase))
    if outcome["status"] != "ACTIVE":
        _check_error(order, outcome)
        return
    container = http.get(ref_path(order["container_ref"])).ok(200)
    refs = {r["name"]: r["secret_ref"] for r in container["secret_refs"]}
    assert set(refs) == {"private_key", "public_key", "private_key_passphrase"}, container
    http.payload(ref_path(refs["private_key_passphrase"])).payload_is(passphrase.encode())
    pem = http.payload(ref_path(refs["private_key"])).ok(200)
    with pytest.raises(TypeError):
        _load_private(pem, None)
    assert _load_private(pem, passphrase.encode()).key_size == 2048


@pytest.mark.parametrize("kind,spec_id", [("key", s) for s in KEY_SPECS] + [("asymmetric", s) for s in ASYM_SPECS])
@labels(FEATURE, "unsupported generation is a client error", NORMAL)
def test_order_never_fails_with_server_error(http, res, caps, request, kind, spec_id):
    """An order either succeeds or fails with a 4xx error_status_code (the request asked for
    something the backend cannot do), never with 500 'please contact site administrator'.
    Known 500s are xfail (capabilities.yaml 'bug': an id of harness/known_bugs/catalogue.py)."""
    outcome = caps.order_outcome(kind, spec_id)
    if outcome.get("bug"):
        request.applymarker(known_bug(outcome["bug"]))
    order = res.wait_order(res.order(kind, **caps.order_spec(kind, spec_id)))
    if outcome["status"] == "ACTIVE":
        assert order["status"] == "ACTIVE", order
        return
    assert order["status"] == "ERROR", order
    assert order["error_status_code"].startswith("4"), (
        f"{spec_id} on {caps.default_backend}: {order['error_status_code']} {order['error_reason']}")


@labels(FEATURE, "order lifecycle", BLOCKER)
def test_order_document_and_delete(http, res):
    """GET /v1/orders/{id} shows type, meta as sent (plus name/expiration), creator_id,
    sub_status and status PENDING or ACTIVE; the project admin's DELETE is 204 and the order is
    then 404 'Order not found.' (the generated secret stays)."""
    name = f"cf-order-{uuid.uuid4().hex[:8]}"
    oref = res.order("key", name=name, algorithm="aes", bit_length=256, mode="cbc",
                     payload_content_type="application/octet-stream")
    first = http.get(ref_path(oref)).ok(200)
    assert first["status"] in ("PENDING", "ACTIVE") and first["type"] == "key"
    assert first["meta"] == {"name": name, "algorithm": "aes", "bit_length": 256, "mode": "cbc",
                             "payload_content_type": "application/octet-stream", "expiration": None}
    assert first["creator_id"] == http.user_id(http.writer)
    order = res.wait_order(oref)
    assert order["status"] == "ACTIVE" and "sub_status" in order and "sub_status_message" in order
    http.delete(ref_path(oref), role=http.role("project_admin")).expect(204)
    http.get(ref_path(oref)).error(404, "Order not found.")
    assert http.get(ref_path(order["secret_ref"])).ok(200)["name"] == name


@labels(FEATURE, "order lifecycle", NORMAL)
def test_order_expiration_is_passed_to_the_secret(http, res):
    """An order's meta.expiration becomes the generated secret's expiration."""
    order = res.wait_order(res.order("key", algorithm="aes", bit_length=128, expiration="2100-01-01T00:00:00Z"))
    assert order["status"] == "ACTIVE", order
    assert http.get(ref_path(order["secret_ref"])).ok(200)["expiration"] == "2100-01-01T00:00:00"


@labels(FEATURE, "order lifecycle", NORMAL)
def test_list_orders_pages(http, res):
    """GET /v1/orders lists the project's orders with total and paging links."""
    refs = [res.order("key", algorithm="aes", bit_length=128) for _ in range(3)]
    body = http.get("/v1/orders", params={"limit": 2}).ok(200)
    assert body["total"] >= 3 and len(body["orders"]) == 2 and "next" in body
    everything = []
    url = http.url("/v1/orders", params={"limit": 100})
    while url:
        page = http.get(ref_path(url)).ok(200)
        everything += [o["order_ref"] for o in page["orders"]]
        url = page.get("next")
    assert set(refs) <= set(everything)


INVALID_ORDERS = {
    "missing-algorithm": ({"type": "key", "meta": {"bit_length": 256}},
                          "'algorithm' is required field for key type order"),
    "missing-bit-length": ({"type": "key", "meta": {"algorithm": "aes"}},
                           "'bit_length' is required field for key type order"),
    "bit-length-not-multiple-of-8": ({"type": "key", "meta": {"algorithm": "aes", "bit_length": 13}},
                                     "Provided field value is not supported"),
    "asym-missing-bit-length": ({"type": "asymmetric", "meta": {"algorithm": "rsa"}},
                                "'bit_length' is required field for asymmetric key type order"),
    "ec-bad-curve": ({"type": "asymmetric", "meta": {"algorithm": "ec", "bit_length": 512}},
                     "Provided field value is not supported"),
    "certificate-type": ({"type": "certificate", "meta": {}}, "'certificate' is not one of ['key', 'asymmetric']"),
    "missing-meta": ({"type": "key"}, "'meta' is a required property"),
    "missing-type": ({"meta": {"algorithm": "aes", "bit_length": 256}}, "'type' is a required property"),
    "payload-in-meta": ({"type": "key", "meta": {"algorithm": "aes", "bit_length": 256, "payload": "x",
                                                 "payload_content_type": "text/plain"}},
                        "'payload' not allowed for key type order"),
    "past-expiration": ({"type": "key", "meta": {"algorithm": "aes", "bit_length": 256,
                                                 "expiration": "2000-01-01T00:00:00Z"}},
                        "'expiration' is before current time"),
    "bad-content-type": ({"type": "key", "meta": {"algorithm": "aes", "bit_length": 256,
                                                  "payload_content_type": "text/foo"}},
                         "payload_content_type is not one of"),
}


@pytest.mark.parametrize("case", list(INVALID_ORDERS))
@labels(FEATURE, "order validation (400)", CRITICAL)
def test_invalid_order_is_400(http, res, case):
    """Orders with a bad type, missing meta fields, a bit length that is not a multiple of 8 (or
    not an EC curve size), a payload, a past expiration or an unknown content type are 400 and
    no order is made."""
    body, reason = INVALID_ORDERS[case]
    resp = http.post("/v1/orders", json=body)
    if resp.status == 202:
        res.track("order", resp.json["order_ref"])
    resp.error(400, reason)


@labels(FEATURE, "orders cannot be updated", NORMAL)
def test_put_orders_is_405(http):
    """PUT /v1/orders is 405 'Order update is not supported.' (after the policy check)."""
    http.put("/v1/orders", json={"type": "key", "meta": {}}).error(405, "Order update is not supported.",
                                                                  title="Method Not Allowed")


@pytest.mark.parametrize("ctype", ["text/plain", "application/xml"])
@labels(FEATURE, "request content type (415)", NORMAL)
def test_order_with_non_json_is_415(http, ctype):
    """POST /v1/orders accepts only application/json: others are 415."""
    http.post("/v1/orders", data=b'{"type": "key"}', headers={"Content-Type": ctype}).error(
        415, "Unexpected content type. Expected content types are: ['application/json']")


@labels(FEATURE, "project isolation", BLOCKER)
def test_order_of_another_project_is_404(http, res):
    """Orders are looked up inside the caller's project: another project's member gets 404
    'Order not found.' for GET and DELETE (not 403), and the order is untouched."""
    oref = ref_path(res.order("key", algorithm="aes", bit_length=128))
    http.get(oref, role="other-member").error(404, "Order not found.")
    http.delete(oref, role=http.role("other_admin")).error(404, "Order not found.")
    assert http.get(oref).ok(200)["order_ref"].endswith(oref)


@pytest.mark.parametrize("path,message", [("/v1/orders/not-a-uuid", "Order not found."),
                                          ("/v1/orders/{random}", "Order not found.")],
                         ids=["malformed-id", "unknown-id"])
@labels(FEATURE, "not found", NORMAL)
def test_unknown_order_is_404(http, path, message):
    """An unknown or malformed order id is 404 'Order not found.'"""
    http.get(path.format(random=uuid.uuid4())).error(404, message)
