"""Shared fixtures of the conformance suites (conformance/api, conformance/rbac).

Target selection
----------------
Every conformance test takes the session-scoped ``target`` fixture:

* with ``--barbican-env PATH``, ``--barbican-run RUN_ID`` or ``--barbican-cloud NAME`` it is the
  plugin's ``barbican_env`` (one target; its id is the topology / cloud name);
* otherwise the tests are parametrized over the default topologies
  (``DEFAULT_TOPOLOGIES``, or ``BARBICAN_CONFORMANCE_TOPOLOGIES=a,b``), each brought up once per
  xdist worker through ``barbican_env_pool``.  Every test of one topology is put in the
  ``xdist_group`` of that topology, so with ``-n 2 --dist loadgroup`` each environment lives on
  exactly one worker and its tests run one after the other (quota and preferred-store tests
  change project-wide state, so they must not race with the rest of the topology's tests).

Helpers (fixtures)
------------------
``http``   raw HTTP as any seeded role (``http.get("/v1/secrets", role="reader")``) returning
           ``Resp`` objects with status/body assertions (``resp.ok(200)``, ``resp.error(404, "...")``,
           ``resp.denied()``, ``resp.payload_is(b"...")``). One connection per request (see
           ``Http.request`` for what kept-alive connections did under uWSGI http11-socket).
``res``    creates secrets/containers/orders (and tracks what orders generate) with unique names
           and deletes them at teardown, even when the test failed — as the project admin where
           there is one (the legacy policy lets only a project admin delete orders).
``caps``   per-backend / per-server capability data (conformance/capabilities.yaml), with reasons.
``uname``  a unique name factory.
``shared_http`` / ``shared_caps``: session-scoped versions for module-scoped fixtures.

Secret payloads are never printed: bodies of payload responses are left out of failure messages
and ``Resp`` reprs, and ``payload_is`` reports lengths and hash prefixes only.
"""

from __future__ import annotations

import base64
import json as _json
import os
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import yaml

from harness.identity import POLICY_ROLES  # which seeded role does what, per policy mode

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ENVIRONMENTS = REPO / "environments"
CAPABILITIES_FILE = HERE / "capabilities.yaml"

HTTP_TIMEOUT = 15  # seconds, as harness.identity.HTTP_TIMEOUT

DEFAULT_TOPOLOGIES = ["simple-crypto", "pkcs11-softhsm", "multi-store", "simple-crypto-secure-rbac"]


# -- target selection -------------------------------------------------------------------------
def _explicit_target(config) -> bool:
    return any(config.getoption(o, default=None) for o in ("--barbican-env", "--barbican-run", "--barbican-cloud"))


def _topologies() -> list[str]:
    env = os.environ.get("BARBICAN_CONFORMANCE_TOPOLOGIES")
    if env:
        return [t.strip() for t in env.split(",") if t.strip()]
    return list(DEFAULT_TOPOLOGIES)


def _explicit_target_id(config) -> str:
    """A readable id for the one target given on the command line."""
    opt = config.getoption
    if opt("--barbican-cloud"):
        return f"cloud-{opt('--barbican-cloud')}"
    if opt("--barbican-run"):
        try:
            from harness.environment import STATE_FILE, find_run_dir

            state = _json.loads((find_run_dir(opt("--barbican-run")) / STATE_FILE).read_text())
            return state["topology"]["name"]
        except Exception:  # noqa: BLE001 - an id only; the fixture reports the real error
            return str(opt("--barbican-run"))
    try:
        return yaml.safe_load(Path(opt("--barbican-env")).read_text())["name"]
    except Exception:  # noqa: BLE001
        return Path(opt("--barbican-env")).stem


def pytest_generate_tests(metafunc):
    if "target" not in metafunc.fixturenames:
        return
    config = metafunc.config
    if _explicit_target(config):
        ids = [_explicit_target_id(config)]
        params = [None]
    else:
        ids = _topologies()
        params = [ENVIRONMENTS / f"{t}.yaml" for t in ids]
    metafunc.parametrize("target", params, ids=ids, indirect=True, scope="session")


def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or "target" not in callspec.params:
            continue
        item.add_marker(pytest.mark.xdist_group(_target_group(config, callspec.params["target"])))


def _target_group(config, param) -> str:
    return _explicit_target_id(config) if param is None else Path(param).stem


@pytest.fixture(scope="session")
def target(request, barbican_env_pool):
    """The Barbican under test: a harness Environment or a CloudTarget (same surface)."""
    if request.param is None:
        return request.getfixturevalue("barbican_env")
    return barbican_env_pool.get(request.param)


# -- raw HTTP ---------------------------------------------------------------------------------
def _short(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


@dataclass
class Resp:
    """One HTTP exchange, with assertion helpers that show the request in their message."""

    method: str
    url: str
    role: str | None
    status: int
    headers: Any
    content: bytes
    secret_body: bool = False  # the body may be a secret payload: never print it

    def __repr__(self) -> str:  # pytest shows reprs in assertion messages: never the payload
        return f"<Resp {self.method} {self.url} as {self.role}: {self.status}, {len(self.content)} bytes>"

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    @property
    def json(self) -> Any:
        try:
            return _json.loads(self.content)
        except ValueError:
            raise AssertionError(f"{self._where()}: body is not JSON: {self._body_for_message()}") from None

    def _body_for_message(self) -> str:
        if self.secret_body and self.status < 300:
            return f"<{len(self.content)} bytes, not shown: may be a secret payload>"
        return _short(self.text)

    def _where(self) -> str:
        return f"{self.method} {self.url} as {self.role or 'anonymous'} -> {self.status}"

    def describe(self) -> str:
        return f"{self._where()}: {self._body_for_message()}"

    def expect(self, *statuses: int) -> Resp:
        assert self.status in statuses, f"expected HTTP {'/'.join(map(str, statuses))}; {self.describe()}"
        return self

    def ok(self, status: int = 200) -> Any:
        """Assert the status; return the JSON body (None when there is no body)."""
        self.expect(status)
        if not self.content:
            return None
        ctype = self.headers.get("Content-Type", "")
        return self.json if "json" in ctype else self.content

    def payload_is(self, expected: bytes, what: str = "payload") -> Resp:
        """Assert 200 and that the body is exactly `expected`, without ever showing either (a
        failure names lengths and SHA-256 prefixes only)."""
        __tracebackhide__ = True
        self.expect(200)
        if self.content != expected:
            import hashlib

            def fp(b: bytes) -> str:
                return f"{len(b)} bytes, sha256 {hashlib.sha256(b).hexdigest()[:12]}"

            raise AssertionError(f"{what} differs: got {fp(self.content)}, expected {fp(expected)}; "
                                 f"{self.method} {self.url} as {self.role}")
        return self

    def error(self, status: int, contains: str | tuple | None = None, *, title: str | None = None) -> dict:
        """Assert Barbican's JSON error document {"code", "title", "description"}; `contains` is a
        substring of the description (a tuple: any of them, e.g. across jsonschema versions)."""
        self.expect(status)
        body = self.json
        assert isinstance(body, dict), self.describe()
        if "code" in body:  # Barbican's own error document
            assert body["code"] == status, self.describe()
            assert isinstance(body.get("title"), str) and body["title"], self.describe()
            desc = body.get("description", "")
        else:  # keystonemiddleware's {"error": {"code", "title", "message"}}
            err = body.get("error", {})
            assert err.get("code") == status, self.describe()
            desc = err.get("message", "")
        if title is not None:
            assert (body.get("title") or body.get("error", {}).get("title")) == title, self.describe()
        if contains is not None:
            options = contains if isinstance(contains, tuple) else (contains,)
            assert any(c in desc for c in options), (
                f"expected {' or '.join(map(repr, options))} in the error description; {self.describe()}")
        return body

    def denied(self, operation: str | None = None) -> dict:
        """403 from the policy engine: '<Operation> attempt not allowed - please review ...'."""
        body = self.error(403, "attempt not allowed - please review your user/project privileges")
        if operation:
            assert body["description"].startswith(operation), self.describe()
        return body


class Http:
    """Raw HTTP against the target, as any seeded role, on any node."""

    def __init__(self, target):
        self.target = target
        self._anon = None

    @property
    def policy(self) -> str:
        return self.target.policy

    def role(self, purpose: str) -> str:
        return POLICY_ROLES[self.policy][purpose]

    @property
    def writer(self) -> str:
        return self.target.writer_role

    def node_url(self, node=None) -> str:
        nodes = self.target.nodes
        if node is None:
            return nodes[0].url
        if isinstance(node, int):
            return nodes[node % len(nodes)].url
        for n in nodes:
            if n.name == node:
                return n.url
        raise KeyError(node)

    def url(self, path: str, node=None, params: dict | None = None) -> str:
        url = path if path.startswith("http") else self.node_url(node) + path
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params, doseq=True)
        return url

    def request(self, method: str, path: str, *, role: str | None = "writer", node=None,
                headers: dict | None = None, json: Any = None, data: bytes | str | None = None,
                params: dict | None = None, microversion: str | None = None,
                secret_body: bool = False, token: str | None = None) -> Resp:
        """role=None → no token at all; token=... → that X-Auth-Token instead of the role's token
        (from the role's keystoneauth session, which re-authenticates when it expires)."""
        url = self.url(path, node, params)
        headers = dict(headers or {})
        if microversion:
            headers["OpenStack-API-Version"] = f"key-manager {microversion}"
        if role == "writer":
            role = self.writer
        if role is not None and role not in self.target.roles:
            # Only an existing cloud lacks roles (its targets file names what it has); an
            # environment of the harness has every role, so nothing is skipped there.
            pytest.skip(f"{self.target.name} has no role '{role}' (its targets file names none)")
        if role is not None and token is None:
            token = self.target.session(role).get_token()
        if token is not None:
            headers["X-Auth-Token"] = token
        # One connection per request, closed after it. Measured with the harness's former uWSGI
        # config (http11-socket, threads=4; now one request per connection, commit b10edbc): each
        # idle keep-alive connection held one of the 4 threads until the 4 s socket timeout, so a
        # client with sessions for 4+ roles stalled ~4 s on its next connection, and a connection
        # on which Barbican answered without reading the body (403/404/415 before load_body) was
        # often reset on its next request. Kept so any target (a cloud too) behaves the same.
        headers.setdefault("Connection", "close")
        if json is not None:
            headers.setdefault("Content-Type", "application/json")
            data = _json.dumps(json)
        if isinstance(data, str):
            data = data.encode("utf-8")
        r = requests.request(method, url, headers=headers, data=data, timeout=HTTP_TIMEOUT, allow_redirects=False)
        return Resp(method, url, role, r.status_code, r.headers, r.content, secret_body=secret_body)

    def get(self, path, **kw) -> Resp:
        return self.request("GET", path, **kw)

    def post(self, path, **kw) -> Resp:
        return self.request("POST", path, **kw)

    def put(self, path, **kw) -> Resp:
        return self.request("PUT", path, **kw)

    def patch(self, path, **kw) -> Resp:
        return self.request("PATCH", path, **kw)

    def delete(self, path, **kw) -> Resp:
        return self.request("DELETE", path, **kw)

    def payload(self, secret_ref: str, accept: str | None = "application/octet-stream", **kw) -> Resp:
        headers = dict(kw.pop("headers", {}) or {})
        if accept is not None:
            headers["Accept"] = accept
        return self.get(secret_ref + "/payload", headers=headers, secret_body=True, **kw)

    # identities
    def user_id(self, role: str) -> str:
        return self.target.session(role).get_user_id()

    def project_id(self, role: str) -> str:
        return self.target.session(role).get_project_id()

    def token(self, role: str) -> str:
        return self.target.session(role).get_token()


def ref_id(ref: str) -> str:
    return ref.rstrip("/").rsplit("/", 1)[-1]


def ref_path(ref: str) -> str:
    """/v1/... part of an href (hrefs carry one node's host_href; requests may go to another)."""
    i = ref.find("/v1/")
    assert i >= 0, f"not a Barbican v1 href: {ref}"
    return ref[i:]


# -- unique names -----------------------------------------------------------------------------
def unique_name(prefix: str = "cf") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def uname(request):
    """uname() / uname('tag') → a name nobody else uses (test name + uuid suffix)."""
    base = request.node.originalname.removeprefix("test_")[:24].replace("_", "-")

    def make(tag: str = "") -> str:
        return unique_name(f"cf-{base}{'-' + tag if tag else ''}")

    return make


# -- resources with cleanup -------------------------------------------------------------------
@dataclass
class _Created:
    kind: str
    ref: str
    role: str


@dataclass
class Resources:
    """Creates Barbican resources for one test and deletes them all at teardown."""

    http: Http
    name_prefix: str
    created: list[_Created] = field(default_factory=list)
    cleanups: list = field(default_factory=list)

    def _name(self) -> str:
        return unique_name(self.name_prefix)

    def track(self, kind: str, ref: str, role: str | None = None) -> str:
        self.created.append(_Created(kind, ref, role or self.http.writer))
        return ref

    def on_cleanup(self, fn) -> None:
        """Run fn() at teardown (before resources are deleted), e.g. restore a quota."""
        self.cleanups.append(fn)

    # secrets
    def secret_body(self, **body) -> dict:
        body.setdefault("name", self._name())
        return body

    def secret(self, role: str | None = None, *, expect: int = 201, node=None, microversion=None, **body) -> str:
        """POST /v1/secrets; default: a text/plain opaque secret with a random payload."""
        if "payload" not in body and not body.pop("metadata_only", False):
            body.setdefault("payload", uuid.uuid4().hex)
            body.setdefault("payload_content_type", "text/plain")
        resp = self.http.post("/v1/secrets", role=role or "writer", json=self.secret_body(**body), node=node,
                              microversion=microversion)
        data = resp.ok(expect)
        assert set(data) == {"secret_ref"}, resp.describe()
        assert resp.headers.get("Location") == data["secret_ref"], resp.describe()
        return self.track("secret", data["secret_ref"], role)

    def symmetric_key(self, role: str | None = None, bits: int = 256, **body) -> str:
        key = os.urandom(bits // 8)
        body.setdefault("algorithm", "aes")
        body.setdefault("bit_length", bits)
        body.setdefault("mode", "cbc")
        body.setdefault("secret_type", "symmetric")
        return self.secret(role, payload=base64.b64encode(key).decode(),
                           payload_content_type="application/octet-stream",
                           payload_content_encoding="base64", **body)

    # containers
    def container(self, role: str | None = None, *, type: str = "generic", secret_refs: dict | None = None,
                  expect: int = 201, **body) -> str:
        body.setdefault("name", self._name())
        body["type"] = type
        body["secret_refs"] = [{"name": n, "secret_ref": r} for n, r in (secret_refs or {}).items()]
        resp = self.http.post("/v1/containers", role=role or "writer", json=body)
        data = resp.ok(expect)
        assert set(data) == {"container_ref"}, resp.describe()
        return self.track("container", data["container_ref"], role)

    # orders
    def order(self, type: str = "key", role: str | None = None, expect: int = 202, **meta) -> str:
        meta.setdefault("name", self._name())
        resp = self.http.post("/v1/orders", role=role or "writer", json={"type": type, "meta": meta})
        data = resp.ok(expect)
        assert set(data) == {"order_ref"}, resp.describe()
        return self.track("order", data["order_ref"], role)

    def wait_order(self, order_ref: str, role: str | None = None, timeout: float = 60.0) -> dict:
        """Poll until the order leaves PENDING; returns the order document."""
        deadline = time.monotonic() + timeout
        while True:
            order = self.http.get(order_ref, role=role or "writer").ok(200)
            if order["status"] != "PENDING" or time.monotonic() > deadline:
                # What the order made is ours to delete too.
                if order.get("secret_ref"):
                    self.track("secret", order["secret_ref"], role)
                if order.get("container_ref"):
                    self.track("container", order["container_ref"], role)
                    container = self.http.get(order["container_ref"], role=role or "writer")
                    if container.status == 200:
                        for sref in container.json.get("secret_refs", []):
                            self.track("secret", sref["secret_ref"], role)
                return order
            time.sleep(0.3)

    # teardown
    def _deleter(self, item: _Created) -> str:
        if item.kind not in ("secret", "container", "order"):
            return item.role  # e.g. transport keys: only their (service-)admin may delete them
        roles = self.http.target.roles
        other = item.role.startswith("other-")
        admin = "other-admin" if other else "admin"
        if admin in roles:
            return admin
        return item.role

    def cleanup(self) -> list[str]:
        problems = []
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep cleaning
                problems.append(f"cleanup step {getattr(fn, '__name__', fn)}: {exc}")
        # containers before secrets (a container keeps references), orders last is fine either way
        order = {"consumer": 0, "container": 1, "order": 2, "secret": 3, "transport_key": 4}
        seen = set()
        newest_first = list(reversed(self.created))
        newest_first.sort(key=lambda c: order.get(c.kind, 9))  # stable: newest first within a kind
        for item in newest_first:
            if (item.kind, item.ref) in seen:
                continue
            seen.add((item.kind, item.ref))
            try:
                if item.kind == "consumer":
                    continue  # removed with their secret/container
                role = self._deleter(item)
                # force=true: delete even with consumers (only honoured from microversion 1.2)
                params = {"force": "true"} if item.kind == "secret" else None
                resp = self.http.delete(ref_path(item.ref), role=role, params=params)
                if resp.status not in (204, 404):
                    resp2 = self.http.delete(ref_path(item.ref), role=item.role, params=params)
                    if resp2.status not in (204, 404):
                        problems.append(resp2.describe())
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{item.kind} {item.ref}: {exc}")
        self.created.clear()
        return problems


@pytest.fixture(scope="session")
def shared_http(target):
    return Http(target)


@pytest.fixture
def http(shared_http) -> Http:
    return shared_http


@pytest.fixture
def res(http, request):
    """Resources made by this test, deleted at teardown even when the test failed."""
    base = request.node.originalname.removeprefix("test_")[:20].replace("_", "-")
    r = Resources(http, f"cf-{base}")
    yield r
    problems = r.cleanup()
    if problems:
        warnings.warn("conformance cleanup left something behind: " + "; ".join(problems), stacklevel=1)


# -- capabilities -----------------------------------------------------------------------------
class Capabilities:
    """What the target can do, from conformance/capabilities.yaml plus what the server reports.

    Each capability is a dict with at least ``supported`` (bool) and ``reason`` (why); the
    tests assert the positive behaviour where supported and the documented failure where not.
    """

    def __init__(self, data: dict, http: Http):
        self.data = data
        self.http = http
        self.backends = list(http.target.backends)
        self.default_backend = self.backends[0]
        self._server_max = None

    def backend(self, name: str, backend: str | None = None):
        backend = backend or self.default_backend
        table = self.data["backends"].get(backend)
        if table is None or name not in table:
            raise KeyError(f"capabilities.yaml: no '{name}' for backend '{backend}'")
        return table[name]

    def order_spec(self, kind: str, spec_id: str) -> dict:
        return dict(self.data["order_specs"][kind][spec_id])

    def order_outcome(self, kind: str, spec_id: str, backend: str | None = None) -> dict:
        """{'status': 'ACTIVE'} or {'status': 'ERROR', 'error_status_code', 'error_reason', ['bug']}
        for an order spec (kind 'key' / 'asymmetric') on a backend (default: the default store's);
        'bug' is the id of a Barbican bug in harness/known_bugs/catalogue.py."""
        table = self.backend(f"{kind}_orders", backend)
        outcome = table[spec_id]
        if isinstance(outcome, str):
            return {"status": outcome}
        return dict(outcome)

    def asymmetric_with_passphrase(self, backend: str | None = None) -> dict:
        outcome = self.backend("asymmetric_with_passphrase", backend)
        return {"status": outcome} if isinstance(outcome, str) else dict(outcome)

    def secret_payload(self, case: str, backend: str | None = None) -> dict:
        """How a POSTed payload case behaves on the backend: {'status': 201, 'read_back':
        'exact' | 'pem-trailing-newline'} or {'status': 500, 'description': ...}."""
        outcome = dict(self.backend("secret_payloads", backend).get(case) or {})
        outcome.setdefault("status", 201)
        outcome.setdefault("read_back", "exact")
        return outcome

    def backend_reason(self, backend: str | None = None) -> str:
        return self.data["backends"][backend or self.default_backend]["reason"]

    def server(self, name: str):
        return self.data["server"][name]

    def configuration(self, name: str) -> dict:
        return self.data["configurations"][name]

    @property
    def multiple_stores(self) -> bool:
        return len(self.backends) > 1

    @property
    def max_microversion(self) -> str:
        """As the server reports it (GET / with a 1.1 header lists min/max_version)."""
        if self._server_max is None:
            resp = self.http.get("/", role=None, microversion="1.1", headers={"Accept": "application/json"})
            body = resp.ok(300)
            self._server_max = body["versions"][0]["max_version"]
        return self._server_max

    def supports_microversion(self, version: str) -> bool:
        def key(v):
            return tuple(int(p) for p in v.split("."))

        return key(version) <= key(self.max_microversion)


@pytest.fixture(scope="session")
def capabilities_data() -> dict:
    return yaml.safe_load(CAPABILITIES_FILE.read_text())


@pytest.fixture(scope="session")
def shared_caps(shared_http, capabilities_data):
    return Capabilities(capabilities_data, shared_http)


@pytest.fixture
def caps(shared_caps) -> Capabilities:
    return shared_caps
