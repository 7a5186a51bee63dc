"""GET /v1/secrets: filters (name, alg, mode, bits, secret_type, created/updated/expiration with
gt/gte/lt/lte), sorting, and paging (limit, offset, total, next/previous, clamping)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from urllib.parse import parse_qs, urlparse

import pytest

from conformance.api import CRITICAL, MINOR, NORMAL, labels
from conformance.conftest import Resources, ref_path
from harness.known_bugs import known_bug

FEATURE = "Secret lists"


def _days(n: int) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=n)).strftime("%Y-%m-%dT%H:%M:%SZ")


# Dataset: one unique name, three creation seconds (g1 < g2 < g3), distinct attributes.
DATASET = {
    "a": (1, {"secret_type": "symmetric", "algorithm": "aes", "bit_length": 128, "mode": "cbc", "expiration": 10}),
    "b": (1, {"secret_type": "symmetric", "algorithm": "aes", "bit_length": 256, "mode": "ctr", "expiration": 20}),
    "c": (2, {"secret_type": "opaque", "algorithm": "hmacsha256", "bit_length": 256, "expiration": 30}),
    "d": (2, {"secret_type": "passphrase", "expiration": 40}),
    "e": (3, {"secret_type": "private", "algorithm": "rsa", "bit_length": 2048}),
}


@pytest.fixture(scope="module")
def dataset(shared_http):
    """Five secrets sharing one unique name, created in three different seconds."""
    res = Resources(shared_http, "cf-lists")
    name = f"cf-lists-{uuid.uuid4().hex[:12]}"
    refs, group_seen = {}, None
    try:
        for key, (group, attrs) in DATASET.items():
            if group_seen is not None and group != group_seen:
                time.sleep(1.1)  # created/updated have a resolution of one second
            group_seen = group
            body = dict(attrs)
            if "expiration" in body:
                body["expiration"] = _days(body["expiration"])
            # metadata-only: the filters are about metadata, and typed payloads differ by backend
            refs[key] = res.secret(name=name, metadata_only=True, **body)
        docs = {k: shared_http.get(ref_path(r)).ok(200) for k, r in refs.items()}
        yield {"name": name, "refs": refs, "docs": docs, "by_ref": {r: k for k, r in refs.items()}}
    finally:
        res.cleanup()


def _listed(http, dataset, **params) -> set[str]:
    resp = http.get("/v1/secrets", params={"name": dataset["name"], "limit": 100, **params})
    body = resp.ok(200)
    keys = {dataset["by_ref"].get(s["secret_ref"], s["secret_ref"]) for s in body["secrets"]}
    assert body["total"] == len(body["secrets"]), resp.describe()
    return keys


@labels(FEATURE, "name filter", CRITICAL)
def test_name_filter(http, dataset):
    """name=<value> returns exactly the secrets with that name (total = count), each with its
    full metadata; an unknown name gives {"secrets": [], "total": 0} without paging links."""
    assert _listed(http, dataset) == set(DATASET)
    resp = http.get("/v1/secrets", params={"name": f"cf-none-{uuid.uuid4().hex}"})
    assert resp.ok(200) == {"secrets": [], "total": 0}


EQUALITY_FILTERS = [
    ("alg", "aes", {"a", "b"}),
    ("alg", "rsa", {"e"}),
    ("alg", "hmacsha256", {"c"}),
    ("alg", "camellia", set()),
    ("mode", "cbc", {"a"}),
    ("mode", "ctr", {"b"}),
    ("bits", "256", {"b", "c"}),
    ("bits", "2048", {"e"}),
    ("bits", "512", set()),
    ("bits", "not-a-number", set(DATASET)),  # invalid bits is ignored (treated as 0)
    ("secret_type", "symmetric", {"a", "b"}),
    ("secret_type", "passphrase", {"d"}),
    ("secret_type", "private", {"e"}),
    ("secret_type", "opaque", {"c"}),
    ("secret_type", "certificate", set()),
]


@pytest.mark.parametrize("param,value,expected", EQUALITY_FILTERS,
                         ids=[f"{p}={v}" for p, v, _ in EQUALITY_FILTERS])
@labels(FEATURE, "attribute filters", CRITICAL)
def test_attribute_filter(http, dataset, param, value, expected):
    """alg, mode, bits and secret_type filters select exactly the matching secrets (combined with
    the name filter); a non-numeric bits is ignored."""
    assert _listed(http, dataset, **{param: value}) == expected


def _ts(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


OPS = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("field,pivot_key", [("created", "c"), ("updated", "c"), ("expiration", "b")])
@labels(FEATURE, "date filters", CRITICAL)
def test_date_filter_operators(http, dataset, field, pivot_key, op):
    """created/updated/expiration=<op>:<ISO time> (gt, gte, lt, lte) returns exactly the secrets
    whose field compares so with the time (secrets without an expiration never match an
    expiration comparison)."""
    docs = dataset["docs"]
    pivot = docs[pivot_key][field]
    expected = {k for k, d in docs.items() if d[field] is not None and OPS[op](_ts(d[field]), _ts(pivot))}
    got = _listed(http, dataset, **{field: f"{op}:{pivot}"})
    assert got == expected, f"{field}={op}:{pivot}"
    assert expected and expected != set(DATASET) or op in ("gte", "lte"), "dataset too uniform to prove anything"


@pytest.mark.parametrize("field", ["created", "updated"])
@labels(FEATURE, "date filters", NORMAL)
def test_date_filter_equality_and_range(http, dataset, field):
    """A bare time is equality (same second); 'gt:X,lt:Y' is a range."""
    docs = dataset["docs"]
    t1, t2, t3 = docs["a"][field], docs["c"][field], docs["e"][field]
    assert _listed(http, dataset, **{field: t2}) == {k for k, d in docs.items() if d[field] == t2}
    assert _listed(http, dataset, **{field: f"gt:{t1},lt:{t3}"}) == {
        k for k, d in docs.items() if _ts(t1) < _ts(d[field]) < _ts(t3)}


@labels(FEATURE, "date filters", NORMAL)
def test_expiration_range(http, dataset):
    """expiration=gte:X,lte:Y selects the secrets expiring in [X, Y]."""
    docs = dataset["docs"]
    lo, hi = docs["b"]["expiration"], docs["c"]["expiration"]
    assert _listed(http, dataset, expiration=f"gte:{lo},lte:{hi}") == {"b", "c"}


INVALID_DATE_FILTERS = ["gt:2020-01-01T00:00:00,gte:2020-01-01T00:00:00",
                        "lt:2020-01-01T00:00:00,lte:2020-01-01T00:00:00",
                        "gte:2020-01-01T00:00:00,2020-01-01T00:00:00",
                        "2020-01-01T00:00:00,2020-01-02T00:00:00",
                        "gt:yesterday",
                        "2020-13-45"]


@pytest.mark.parametrize("field", ["created", "updated", "expiration"])
@pytest.mark.parametrize("value", INVALID_DATE_FILTERS)
@labels(FEATURE, "date filters", NORMAL)
def test_invalid_date_filter_is_400(http, field, value):
    """A date filter that does not parse, or that repeats a bound (gt with gte, lt with lte,
    two equalities, equality with gte) is 400 'URI provided invalid query string parameters.'"""
    http.get("/v1/secrets", params={field: value}).error(400, "URI provided invalid query string parameters.")


SORT_KEYS = ["algorithm", "bit_length", "created", "expiration", "mode", "name", "secret_type", "status", "updated"]


@pytest.mark.parametrize("direction", ["asc", "desc", None])
@pytest.mark.parametrize("key", SORT_KEYS)
@labels(FEATURE, "sorting", NORMAL)
def test_sort(http, dataset, key, direction):
    """sort=<key>[:asc|:desc] orders the list by that key (ascending without a direction); secrets
    without a value for the key come first ascending and last descending (SQL NULL order)."""
    sort = key if direction is None else f"{key}:{direction}"
    resp = http.get("/v1/secrets", params={"name": dataset["name"], "sort": sort, "limit": 100})
    secrets = resp.ok(200)["secrets"]
    assert {s["secret_ref"] for s in secrets} == set(dataset["refs"].values()), resp.describe()
    values = [s[key] for s in secrets]
    present = [v for v in values if v is not None]
    descending = direction == "desc"
    assert present == sorted(present, reverse=descending), f"sort={sort}: {values}"
    nulls = [i for i, v in enumerate(values) if v is None]
    if nulls:
        expected = list(range(len(nulls))) if not descending else list(range(len(values) - len(nulls), len(values)))
        assert nulls == expected, f"sort={sort}: NULLs at {nulls} in {values}"


@labels(FEATURE, "sorting", NORMAL)
def test_sort_by_two_keys(http, dataset):
    """sort=secret_type:asc,bit_length:desc sorts by type, then by bit length descending."""
    resp = http.get("/v1/secrets", params={"name": dataset["name"], "sort": "secret_type:asc,bit_length:desc"})
    secrets = resp.ok(200)["secrets"]
    types = [s["secret_type"] for s in secrets]
    assert types == sorted(types), resp.describe()
    sym = [s["bit_length"] for s in secrets if s["secret_type"] == "symmetric"]
    assert sym == [256, 128], resp.describe()


@pytest.mark.parametrize("sort", ["payload", "name:sideways", "name:asc:desc", "name,name:desc", "name:"])
@labels(FEATURE, "sorting", NORMAL)
def test_invalid_sort_is_400(http, sort):
    """An unknown sort key or direction, a repeated key, or a malformed key:dir is 400 'URI
    provided invalid query string parameters.'"""
    http.get("/v1/secrets", params={"sort": sort}).error(400, "URI provided invalid query string parameters.")


@labels(FEATURE, "name filter", MINOR)
@known_bug("name-filter-plus-sign")
def test_name_filter_with_plus_sign(http, res):
    """A secret named 'a+b-<uuid>' is found with name=a+b-<uuid> (URL-encoded as a%2Bb-...)."""
    name = f"cf+plus+{uuid.uuid4().hex[:8]}"
    ref = res.secret(name=name)
    body = http.get("/v1/secrets", params={"name": name}).ok(200)
    assert [s["secret_ref"] for s in body["secrets"]] == [ref]


@labels(FEATURE, "name filter", MINOR)
@known_bug("name-filter-like-wildcards")
def test_name_filter_is_not_a_pattern(http, res):
    """name=<value> with '_' matches only a secret named exactly so, not one with another
    character in that place."""
    token = uuid.uuid4().hex[:10]
    res.secret(name=f"cf-wild-{token}")
    body = http.get("/v1/secrets", params={"name": f"cf_wild_{token}"}).ok(200)
    assert body == {"secrets": [], "total": 0}


# -- paging --------------------------------------------------------------------------------------
BULK = 101  # one more than max_limit_paging, to see the clamp


@pytest.fixture(scope="module")
def bulk(shared_http, shared_caps):
    """max_limit_paging + 1 metadata-only secrets under one unique name."""
    assert shared_caps.server("paging")["max_limit"] + 1 == BULK
    res = Resources(shared_http, "cf-paging")
    name = f"cf-paging-{uuid.uuid4().hex[:12]}"
    try:
        refs = [res.secret(name=name, metadata_only=True) for _ in range(BULK)]
        yield {"name": name, "refs": refs}
    finally:
        res.cleanup()


def _qs(href: str) -> dict:
    q = parse_qs(urlparse(href).query)
    return {k: v[0] for k, v in q.items()}


PAGES = [(2, 0), (2, 2), (10, 95), (25, 50), (1, 100), (5, 101), (7, 200)]


@pytest.mark.parametrize("limit,offset", PAGES, ids=[f"limit{limit}-offset{offset}" for limit, offset in PAGES])
@labels(FEATURE, "paging", CRITICAL)
def test_paging_window(http, bulk, limit, offset):
    """limit/offset select a window: len = min(limit, total - offset); total is the whole count;
    'previous' exists when offset > 0 and 'next' when more follow, both keeping the other query
    parameters and pointing at offset -/+ limit; past the end the list is empty with no links."""
    resp = http.get("/v1/secrets", params={"name": bulk["name"], "limit": limit, "offset": offset})
    body = resp.ok(200)
    total = len(bulk["refs"])
    assert body["total"] == total, resp.describe()
    assert len(body["secrets"]) == max(0, min(limit, total - offset)), resp.describe()
    if not body["secrets"]:
        assert set(body) == {"secrets", "total"}, resp.describe()
        return
    if offset > 0:
        prev = _qs(body["previous"])
        assert prev == {"limit": str(limit), "offset": str(max(0, offset - limit)), "name": bulk["name"]}, resp.describe()
    else:
        assert "previous" not in body, resp.describe()
    if offset + limit < total:
        nxt = _qs(body["next"])
        assert nxt == {"limit": str(limit), "offset": str(offset + limit), "name": bulk["name"]}, resp.describe()
    else:
        assert "next" not in body, resp.describe()


@labels(FEATURE, "paging", CRITICAL)
def test_paging_walk_covers_everything_once(http, bulk):
    """Following 'next' from limit=30 visits every secret exactly once."""
    seen: list[str] = []
    url = http.url("/v1/secrets", params={"name": bulk["name"], "limit": 30})
    pages = 0
    while url:
        body = http.get(ref_path(url)).ok(200)
        seen += [s["secret_ref"] for s in body["secrets"]]
        url = body.get("next")
        pages += 1
        assert pages < 10
    assert pages == 4
    assert sorted(seen) == sorted(bulk["refs"])


@pytest.mark.parametrize("limit,expected_len,link_limit", [
    ("1000", 100, "100"),   # clamped to max_limit_paging
    ("100", 100, "100"),
    ("0", 1, "1"),          # below 1 -> 1
    ("-5", 1, "1"),
    ("abc", 10, "10"),      # invalid -> default_limit_paging
    (None, 10, "10"),       # absent -> default
])
@labels(FEATURE, "paging", CRITICAL)
def test_limit_clamping(http, bulk, caps, limit, expected_len, link_limit):
    """limit is clamped to [1, max_limit_paging=100]; a non-numeric or missing limit is
    default_limit_paging (10); the 'next' link carries the effective limit."""
    paging = caps.server("paging")
    assert (paging["default_limit"], paging["max_limit"]) == (10, 100)
    params = {"name": bulk["name"]}
    if limit is not None:
        params["limit"] = limit
    resp = http.get("/v1/secrets", params=params)
    body = resp.ok(200)
    assert len(body["secrets"]) == expected_len, resp.describe()
    assert body["total"] == BULK
    assert _qs(body["next"])["limit"] == link_limit, resp.describe()


@pytest.mark.parametrize("offset", ["-3", "abc", ""])
@labels(FEATURE, "paging", NORMAL)
def test_invalid_offset_is_zero(http, bulk, offset):
    """A negative, non-numeric or empty offset is treated as 0 (no 'previous' link)."""
    body = http.get("/v1/secrets", params={"name": bulk["name"], "limit": 5, "offset": offset}).ok(200)
    assert "previous" not in body and len(body["secrets"]) == 5
    first = http.get("/v1/secrets", params={"name": bulk["name"], "limit": 5, "offset": 0}).ok(200)
    assert [s["secret_ref"] for s in body["secrets"]] == [s["secret_ref"] for s in first["secrets"]]
