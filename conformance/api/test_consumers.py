"""Secret consumers (/v1/secrets/{id}/consumers, microversion 1.1+ field) and container
consumers (/v1/containers/{id}/consumers), including delete-with-consumers (microversion 1.2)."""

from __future__ import annotations

import uuid

import pytest

from conformance.api import BLOCKER, CRITICAL, NORMAL, labels
from conformance.conftest import ref_path

FEATURE_S = "Secret consumers"
FEATURE_C = "Container consumers"
NON_EMPTY = ("should be non-empty", "is too short")  # jsonschema >= 4.21 / older


def consumer(**kw) -> dict:
    c = {"service": "image", "resource_type": "image", "resource_id": str(uuid.uuid4())}
    c.update(kw)
    return c


def _strip(c: dict) -> dict:
    return {k: c[k] for k in ("service", "resource_type", "resource_id")}


# -- secret consumers --------------------------------------------------------------------------
@labels(FEATURE_S, "register, list, remove", BLOCKER)
def test_secret_consumer_lifecycle(http, res):
    """POST .../consumers {service, resource_type, resource_id} is 200 with the secret document
    (consumers listed); GET .../consumers lists it with total 1; the secret at microversion 1.1
    shows it; DELETE with the same body is 200 with the secret minus the consumer."""
    ref = ref_path(res.secret())
    c = consumer()
    resp = http.post(ref + "/consumers", json=c)
    doc = resp.ok(200)
    assert doc["secret_ref"].endswith(ref) and doc["consumers"] == [c], resp.describe()
    listed = http.get(ref + "/consumers").ok(200)
    assert listed["total"] == 1 and [_strip(x) for x in listed["consumers"]] == [c]
    assert listed["consumers"][0]["status"] == "ACTIVE"
    assert http.get(ref, microversion="1.1").ok(200)["consumers"] == [c]
    gone = http.delete(ref + "/consumers", json=c).ok(200)
    assert gone["consumers"] == []
    assert http.get(ref + "/consumers").ok(200) == {"consumers": [], "total": 0}


@labels(FEATURE_S, "idempotent registration", CRITICAL)
def test_secret_consumer_post_is_idempotent(http, res):
    """Registering the same consumer twice is 200 both times and leaves one consumer."""
    ref = ref_path(res.secret())
    c = consumer(service="volume", resource_type="volume")
    assert http.post(ref + "/consumers", json=c).ok(200)["consumers"] == [c]
    assert http.post(ref + "/consumers", json=c).ok(200)["consumers"] == [c]
    assert http.get(ref + "/consumers").ok(200)["total"] == 1


@labels(FEATURE_S, "paging", NORMAL)
def test_secret_consumers_paging(http, res):
    """Consumers are paged like every list: limit/offset, total, next/previous links."""
    ref = ref_path(res.secret())
    for i in range(5):
        http.post(ref + "/consumers", json=consumer(resource_id=f"res-{i}")).ok(200)
    page = http.get(ref + "/consumers", params={"limit": 2, "offset": 2}).ok(200)
    assert page["total"] == 5 and len(page["consumers"]) == 2
    assert "limit=2&offset=4" in page["next"] and "limit=2&offset=0" in page["previous"]
    assert "/consumers" in page["next"]
    everything = http.get(ref + "/consumers", params={"limit": 100}).ok(200)
    assert sorted(c["resource_id"] for c in everything["consumers"]) == [f"res-{i}" for i in range(5)]


INVALID_CONSUMERS = {
    "missing-service": ({"resource_type": "image", "resource_id": "x"}, "'service' is a required property"),
    "missing-resource-type": ({"service": "image", "resource_id": "x"}, "'resource_type' is a required property"),
    "missing-resource-id": ({"service": "image", "resource_type": "image"}, "'resource_id' is a required property"),
    "empty-service": ({"service": "", "resource_type": "image", "resource_id": "x"}, NON_EMPTY),
    "long-resource-type": ({"service": "image", "resource_type": "t" * 256, "resource_id": "x"}, "is too long"),
    "numeric-resource-id": ({"service": "image", "resource_type": "image", "resource_id": 5}, "is not of type 'string'"),
}


@pytest.mark.parametrize("case", list(INVALID_CONSUMERS))
@labels(FEATURE_S, "validation", NORMAL)
def test_invalid_secret_consumer_is_400(http, res, case):
    """A consumer body without service/resource_type/resource_id, or with an empty or too long
    value, is 400 'Provided object does not match schema 'Secret Consumer'...'; none is added."""
    ref = ref_path(res.secret())
    body, reason = INVALID_CONSUMERS[case]
    err = http.post(ref + "/consumers", json=body).error(400, reason)
    assert "Secret Consumer" in err["description"]
    assert http.get(ref + "/consumers").ok(200)["total"] == 0


@labels(FEATURE_S, "remove unknown", NORMAL)
def test_delete_unknown_secret_consumer_is_404(http, res):
    """DELETE of a consumer that is not registered is 404 'Consumer not found.'"""
    ref = ref_path(res.secret())
    http.post(ref + "/consumers", json=consumer(resource_id="kept")).ok(200)
    http.delete(ref + "/consumers", json=consumer(resource_id="never-registered")).error(404, "Consumer not found.")
    assert http.get(ref + "/consumers").ok(200)["total"] == 1


@labels(FEATURE_S, "consumer through an ACL (Octavia pattern)", CRITICAL)
def test_service_registers_consumer_through_acl(http, res):
    """A service user of another project (the Octavia-like 'service') cannot register a consumer
    (403) until the owner adds it to the secret's read ACL; then POST and DELETE of its consumer
    are 200, and the owner sees the consumer."""
    ref = ref_path(res.secret())
    c = consumer(service="load-balancer", resource_type="listener")
    http.post(ref + "/consumers", role="service", json=c).denied("SecretConsumer creation")
    http.put(ref + "/acl", json={"read": {"users": [http.user_id("service")]}}).ok(200)
    assert http.post(ref + "/consumers", role="service", json=c).ok(200)["consumers"] == [c]
    assert [_strip(x) for x in http.get(ref + "/consumers").ok(200)["consumers"]] == [c]
    assert http.delete(ref + "/consumers", role="service", json=c).ok(200)["consumers"] == []


# delete-with-consumers: (microversion, query) -> expected outcome ("deleted" / "blocked" / "bad-force")
DELETE_CASES = [
    (None, None), ("1.0", None), ("1.1", None), ("1.1", "true"),
    ("1.2", None), ("1.2", "false"), ("1.2", "true"), ("1.2", "maybe"),
]


@pytest.mark.parametrize("microversion,force", DELETE_CASES,
                         ids=[f"mv{mv or 'none'}-force{f or 'absent'}" for mv, f in DELETE_CASES])
@labels(FEATURE_S, "delete a secret that has consumers", BLOCKER)
def test_delete_secret_with_consumers(http, res, caps, microversion, force):
    """Below microversion 1.2 a secret with consumers is deleted (204) with its consumers; from 1.2
    (if the server supports it, see capabilities.yaml) DELETE is 400 'Secret cannot be deleted as
    it has consumers' unless ?force=true (204); an unparsable force is 400. A server without 1.2
    answers the 1.2 header with 406."""
    cap = caps.server("delete_secret_with_consumers")
    ref = ref_path(res.secret())
    http.post(ref + "/consumers", json=consumer()).ok(200)
    params = {"force": force} if force is not None else None
    resp = http.delete(ref, microversion=microversion, params=params)
    if microversion and not caps.supports_microversion(microversion):
        resp.expect(406)
        return
    blocking = microversion is not None and caps.supports_microversion(cap["min_microversion"]) and tuple(
        map(int, microversion.split("."))) >= tuple(map(int, cap["min_microversion"].split(".")))
    if blocking and force == "maybe":
        resp.error(cap["bad_force_status"], cap["bad_force_description"])
    elif blocking and force != "true":
        resp.error(cap["blocked_status"], cap["blocked_description"])
    else:
        resp.expect(204)
        http.get(ref).error(404, "Secret not found.")
        return
    # blocked: the secret and its consumer are still there
    assert http.get(ref + "/consumers").ok(200)["total"] == 1


@labels(FEATURE_S, "delete a secret that has consumers", CRITICAL)
def test_delete_secret_after_removing_consumers(http, res, caps):
    """At microversion 1.2, once its consumers are removed the secret can be deleted (204)."""
    if not caps.supports_microversion("1.2"):
        pytest.skip(f"server max microversion {caps.max_microversion} < 1.2")
    ref = ref_path(res.secret())
    c = consumer()
    http.post(ref + "/consumers", json=c).ok(200)
    http.delete(ref, microversion="1.2").error(400, "has consumers")
    http.delete(ref + "/consumers", json=c).ok(200)
    http.delete(ref, microversion="1.2").expect(204)


@labels(FEATURE_S, "missing secret", NORMAL)
def test_consumers_of_missing_secret_is_404(http):
    """Consumers of a secret that does not exist: 404 'Secret not found.'"""
    http.get(f"/v1/secrets/{uuid.uuid4()}/consumers").error(404, "Secret not found.")
    http.post(f"/v1/secrets/{uuid.uuid4()}/consumers", json=consumer()).error(404, "Secret not found.")


@pytest.mark.parametrize("operation", ["list", "post", "delete"])
@labels(FEATURE_S, "project isolation", CRITICAL)
def test_other_project_cannot_use_secret_consumers(http, res, operation):
    """Without an ACL, a member of another project gets 403 listing, adding or removing consumers."""
    ref = ref_path(res.secret())
    c = consumer()
    http.post(ref + "/consumers", json=c).ok(200)
    caller = "other-member"
    if operation == "list":
        http.get(ref + "/consumers", role=caller).denied()
    elif operation == "post":
        http.post(ref + "/consumers", role=caller, json=consumer()).denied()
    else:
        http.delete(ref + "/consumers", role=caller, json=c).denied()
    assert [_strip(x) for x in http.get(ref + "/consumers").ok(200)["consumers"]] == [c]


# -- container consumers -------------------------------------------------------------------------
def ccons(**kw) -> dict:
    c = {"name": "lbaas", "URL": f"https://lb.example/{uuid.uuid4().hex}"}
    c.update(kw)
    return c


@labels(FEATURE_C, "register, list, remove", BLOCKER)
def test_container_consumer_lifecycle(http, res):
    """POST .../consumers {name, URL} is 200 with the container document listing the consumer;
    GET .../consumers lists it (total 1); DELETE with the same body is 200 without it."""
    cref = ref_path(res.container(secret_refs={"a": res.secret()}))
    c = ccons()
    doc = http.post(cref + "/consumers", json=c).ok(200)
    assert doc["container_ref"].endswith(cref) and doc["consumers"] == [c]
    listed = http.get(cref + "/consumers").ok(200)
    assert listed["total"] == 1
    assert [{"name": x["name"], "URL": x["URL"]} for x in listed["consumers"]] == [c]
    assert http.get(cref).ok(200)["consumers"] == [c]
    assert http.delete(cref + "/consumers", json=c).ok(200)["consumers"] == []
    assert http.get(cref + "/consumers").ok(200) == {"consumers": [], "total": 0}


@labels(FEATURE_C, "idempotent registration", NORMAL)
def test_container_consumer_post_is_idempotent(http, res):
    """The same {name, URL} registered twice stays one consumer."""
    cref = ref_path(res.container())
    c = ccons()
    http.post(cref + "/consumers", json=c).ok(200)
    assert http.post(cref + "/consumers", json=c).ok(200)["consumers"] == [c]
    assert http.get(cref + "/consumers").ok(200)["total"] == 1


INVALID_CCONSUMERS = {
    "missing-name": ({"URL": "https://x"}, "'name' is a required property"),
    "missing-url": ({"name": "x"}, "'URL' is a required property"),
    "name-too-long": ({"name": "n" * 37, "URL": "https://x"}, "is too long"),
    "empty-url": ({"name": "x", "URL": ""}, NON_EMPTY),
}


@pytest.mark.parametrize("case", list(INVALID_CCONSUMERS))
@labels(FEATURE_C, "validation", NORMAL)
def test_invalid_container_consumer_is_400(http, res, case):
    """A container consumer needs a name (1-36 chars) and a URL (1-255): otherwise 400."""
    cref = ref_path(res.container())
    body, reason = INVALID_CCONSUMERS[case]
    http.post(cref + "/consumers", json=body).error(400, reason)
    assert http.get(cref + "/consumers").ok(200)["total"] == 0


@labels(FEATURE_C, "remove unknown", NORMAL)
def test_delete_unknown_container_consumer_is_404(http, res):
    """DELETE of a {name, URL} that is not registered is 404 'Consumer not found.'"""
    cref = ref_path(res.container())
    http.delete(cref + "/consumers", json=ccons()).error(404, "Consumer not found.")


@labels(FEATURE_C, "consumers go with the container", NORMAL)
def test_deleting_container_with_consumers(http, res):
    """A container with consumers can be deleted (204); its consumers go with it (404 after)."""
    cref = ref_path(res.container())
    http.post(cref + "/consumers", json=ccons()).ok(200)
    http.delete(cref).expect(204)
    http.get(cref + "/consumers").error(404, "Secrets container not found.")


@labels(FEATURE_C, "paging", NORMAL)
def test_container_consumers_paging(http, res):
    """Container consumers are paged: limit/offset/total and next links."""
    cref = ref_path(res.container())
    for i in range(3):
        http.post(cref + "/consumers", json=ccons(name=f"c{i}")).ok(200)
    page = http.get(cref + "/consumers", params={"limit": 2}).ok(200)
    assert page["total"] == 3 and len(page["consumers"]) == 2 and "offset=2" in page["next"]
