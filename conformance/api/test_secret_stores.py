"""Secret stores (/v1/secret-stores): list, global default, project-preferred store.

Both ways: with several stores enabled (multi-store topology) the positive behaviour; with one
store every route answers 404 'Multiple backends support is not enabled' (capabilities.yaml)."""

from __future__ import annotations

import uuid

import pytest

from conformance.api import BLOCKER, CRITICAL, NORMAL, labels
from conformance.conftest import ref_path

FEATURE = "Secret stores"
# harness backend name -> crypto_plugin reported by Barbican (None: a store without crypto plugin)
CRYPTO_PLUGIN = {"simple_crypto": "simple_crypto", "pkcs11": "p11_crypto", "kmip": None, "vault": None}
STORE_FIELDS = {"name", "crypto_plugin", "secret_store_plugin", "global_default", "status", "secret_store_ref",
                "created", "updated"}


def _disabled(resp, caps) -> None:
    cfg = caps.configuration("multiple_secret_stores")
    resp.error(cfg["disabled_status"], cfg["disabled_description"])


def _stores(http) -> list[dict]:
    return http.get("/v1/secret-stores").ok(200)["secret_stores"]


class Preferred:
    """Set/unset the writer's project preferred store as the store admin; restore after."""

    def __init__(self, http):
        self.http = http
        self.admin = http.role("store_admin")
        resp = http.get("/v1/secret-stores/preferred")
        resp.expect(200, 404)
        self.saved = resp.json["secret_store_ref"] if resp.status == 200 else None
        self.changed = False

    def set(self, store_ref: str):
        self.changed = True
        resp = self.http.post(ref_path(store_ref) + "/preferred", role=self.admin)
        resp.expect(204)
        return resp

    def unset(self, store_ref: str):
        self.changed = True
        return self.http.delete(ref_path(store_ref) + "/preferred", role=self.admin)

    def restore(self):
        if not self.changed:
            return
        current = self.http.get("/v1/secret-stores/preferred")
        if current.status == 200 and current.json["secret_store_ref"] != self.saved:
            self.unset(current.json["secret_store_ref"]).expect(204)
        if self.saved and (current.status != 200 or current.json["secret_store_ref"] != self.saved):
            self.set(self.saved)


@pytest.fixture
def preferred(http, caps):
    if not caps.multiple_stores:
        yield None
        return
    p = Preferred(http)
    yield p
    p.restore()


@labels(FEATURE, "list stores", BLOCKER)
def test_list_secret_stores(http, caps):
    """GET /v1/secret-stores lists one entry per configured store (name, crypto_plugin,
    secret_store_plugin, global_default, status ACTIVE, secret_store_ref), exactly one of them the
    global default; without multiple stores it is 404."""
    resp = http.get("/v1/secret-stores")
    if not caps.multiple_stores:
        _disabled(resp, caps)
        return
    stores = resp.ok(200)["secret_stores"]
    assert len(stores) == len(caps.backends), resp.describe()
    for store in stores:
        assert STORE_FIELDS <= set(store), store
        assert store["status"] == "ACTIVE" and store["secret_store_plugin"], store
    assert sorted(s["crypto_plugin"] or "" for s in stores) == sorted(CRYPTO_PLUGIN[b] or "" for b in caps.backends)
    assert [s["global_default"] for s in stores].count(True) == 1, resp.describe()


@labels(FEATURE, "global default", CRITICAL)
def test_global_default(http, caps):
    """GET /v1/secret-stores/global-default is the store marked global_default, i.e. the first
    backend of the target (the harness's global_default store); without multiple stores 404."""
    resp = http.get("/v1/secret-stores/global-default")
    if not caps.multiple_stores:
        _disabled(resp, caps)
        return
    store = resp.ok(200)
    assert store["global_default"] is True, resp.describe()
    assert store["crypto_plugin"] == CRYPTO_PLUGIN[caps.default_backend], resp.describe()
    assert store in _stores(http)


@labels(FEATURE, "store by id", NORMAL)
def test_get_store_by_id(http, caps):
    """GET of each store's secret_store_ref returns that store's document; an unknown id is 404
    'Not Found. Secret store not found.'; without multiple stores both are 404 (disabled)."""
    unknown = http.get(f"/v1/secret-stores/{uuid.uuid4()}")
    if not caps.multiple_stores:
        _disabled(unknown, caps)
        return
    unknown.error(404, "Not Found. Secret store not found.")
    for store in _stores(http):
        assert http.get(ref_path(store["secret_store_ref"])).ok(200) == store


@labels(FEATURE, "project-preferred store", BLOCKER)
def test_preferred_store_set_and_removed(http, caps, preferred):
    """The project admin's POST .../{store}/preferred is 204; GET /v1/secret-stores/preferred (by
    the writer) then returns that store; another project still has no preferred store; DELETE is
    204, after which GET preferred and a second DELETE are 404 'No preferred secret store defined
    for this project.' Without multiple stores these are 404 (disabled)."""
    if not caps.multiple_stores:
        _disabled(http.get("/v1/secret-stores/preferred"), caps)
        _disabled(http.post(f"/v1/secret-stores/{uuid.uuid4()}/preferred", role=http.role("store_admin")), caps)
        return
    other = http.role("other_writer")
    other_before = http.get("/v1/secret-stores/preferred", role=other)
    target_store = next(s for s in _stores(http) if not s["global_default"])
    if preferred.saved:
        preferred.unset(preferred.saved).expect(204)
    http.get("/v1/secret-stores/preferred").error(404, "No preferred secret store defined for this project.")
    preferred.set(target_store["secret_store_ref"])
    assert http.get("/v1/secret-stores/preferred").ok(200) == target_store
    after = http.get("/v1/secret-stores/preferred", role=other)
    assert (after.status, after.content) == (other_before.status, other_before.content)
    preferred.unset(target_store["secret_store_ref"]).expect(204)
    http.get("/v1/secret-stores/preferred").error(404, "No preferred secret store defined for this project.")
    preferred.unset(target_store["secret_store_ref"]).error(404, "No preferred secret store defined")


@labels(FEATURE, "project-preferred store", CRITICAL)
def test_writer_cannot_set_preferred(http, caps, preferred):
    """Setting or removing the preferred store needs the project admin: the writer gets 403
    ('Setting preferred secret store attempt not allowed'); without multiple stores 404."""
    if not caps.multiple_stores:
        _disabled(http.post(f"/v1/secret-stores/{uuid.uuid4()}/preferred"), caps)
        return
    store = _stores(http)[0]
    http.post(ref_path(store["secret_store_ref"]) + "/preferred").denied("Setting preferred secret store")
    http.delete(ref_path(store["secret_store_ref"]) + "/preferred").denied("Removing preferred secret store")


@labels(FEATURE, "preferred store is used for new secrets", BLOCKER)
def test_preferred_store_generates_new_orders(http, res, caps, preferred):
    """New orders go to the project's preferred store, existing secrets stay readable through the
    store recorded with them: with the non-default store preferred, an rsa-2048 order ends as that
    store's backend allows (capabilities.yaml), and after un-preferring it the default store's
    outcome applies again; a secret stored meanwhile is still readable."""
    if not caps.multiple_stores:
        pytest.skip("one secret store: nothing to prefer (the 404 side is test_preferred_store_set_and_removed)")
    other_store = next(s for s in _stores(http) if not s["global_default"])
    other_backend = next(b for b in caps.backends if CRYPTO_PLUGIN[b] == other_store["crypto_plugin"])
    if preferred.saved:
        preferred.unset(preferred.saved).expect(204)
    preferred.set(other_store["secret_store_ref"])
    stored_there = res.secret(payload="kept in the preferred store", payload_content_type="text/plain")
    order = res.wait_order(res.order("asymmetric", algorithm="rsa", bit_length=2048))
    expected = caps.order_outcome("asymmetric", "rsa-2048", other_backend)
    assert order["status"] == expected["status"], f"preferred {other_backend}: {order}"
    if expected["status"] == "ERROR":
        assert order["error_status_code"] == expected["error_status_code"], order
    preferred.unset(other_store["secret_store_ref"]).expect(204)
    order = res.wait_order(res.order("asymmetric", algorithm="rsa", bit_length=2048))
    assert order["status"] == caps.order_outcome("asymmetric", "rsa-2048")["status"], order
    http.payload(ref_path(stored_there), accept="text/plain").payload_is(b"kept in the preferred store")


@labels(FEATURE, "secret stores by method", NORMAL)
def test_secret_stores_methods(http, caps):
    """Secret stores are read-only apart from 'preferred': POST /v1/secret-stores is 405 (404 when
    disabled is not reached: the routing refuses the method first)."""
    resp = http.post("/v1/secret-stores", json={})
    resp.expect(405)
