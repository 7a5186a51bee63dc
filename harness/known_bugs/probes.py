"""One probe per catalogued bug the API can show: API calls only, through the target's
keystoneauth sessions, each with a timeout.

Probes must be safe on someone else's cloud. They write only in the writer's project,
every name starts with the run id (`known-bugs-...`, recorded in the target's writes
journal, harness.writes, before the first write), and everything they create is deleted
after the probe (also on an error or Ctrl-C; `heal` deletes what a killed run left).
Changing a project quota is the one project-wide change: only with --allow-quota-changes,
with the original recorded before the change and restored right after. A probe that needs
a role the targets file does not give, or a flag, is "not checkable" and says which.

A probe returns Observations, one per case it tried; `judge` turns them into the bug's
status (pure logic, unit-tested).
"""

from __future__ import annotations

import base64
import contextlib
import secrets as _rand
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

from harness.errors import HarnessError
from harness.identity import HTTP_TIMEOUT, POLICY_ROLES
from harness.wait import wait_until

PRESENT, ABSENT, NOT_CHECKABLE = "present", "absent", "not checkable"
STATUSES = (PRESENT, ABSENT, NOT_CHECKABLE)

# What one case of a probe showed.
SEEN = "seen"                  # the bug's behaviour
NOT_SEEN = "not seen"          # the correct behaviour
UNKNOWN = "unknown"            # neither: an unexpected answer, a setup call failed
NOT_APPLICABLE = "n/a"         # the case does not exercise the bug here (e.g. the backend supports it)

ORDER_WAIT_S = 60.0


@dataclass(frozen=True)
class Observation:
    case: str
    outcome: str
    evidence: str

    def line(self) -> str:
        return f"{self.case}: {self.evidence}"


def judge(observations: Iterable[Observation]) -> tuple[str, list[str]]:
    """The bug's status and the evidence lines that decide it. Present when any case showed
    the bug; otherwise, when any case could not tell, not checkable; absent when at least one
    case showed the correct behaviour and none could not tell; not checkable when no case
    applied at all."""
    obs = list(observations)
    by = {k: [o.line() for o in obs if o.outcome == k] for k in (SEEN, NOT_SEEN, UNKNOWN, NOT_APPLICABLE)}
    if by[SEEN]:
        return PRESENT, by[SEEN] + by[NOT_SEEN] + by[UNKNOWN] + by[NOT_APPLICABLE]
    if by[UNKNOWN]:
        return NOT_CHECKABLE, by[UNKNOWN] + by[NOT_SEEN] + by[NOT_APPLICABLE]
    if by[NOT_SEEN]:
        return ABSENT, by[NOT_SEEN] + by[NOT_APPLICABLE]
    return NOT_CHECKABLE, by[NOT_APPLICABLE] or ["the probe tried nothing"]


class NotCheckable(Exception):
    """The probe cannot run on this target (a role, a flag, a backend, a failed set-up call)."""


# -- the prober: calls, roles, resources -------------------------------------------------------
@contextlib.contextmanager
def _ctrl_c_deferred():
    """Ctrl-C (SIGINT) during the block is raised when it ends: at most one request timeout
    later. Only the main thread receives signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if caught:
            raise KeyboardInterrupt


def describe(r) -> str:
    """An answer, for evidence: status and Barbican's description, never a body that may be a
    secret (anything that is not a JSON error document is summarised by type and length)."""
    if isinstance(r, Exception):
        return f"no HTTP response ({type(r).__name__}: {str(r)[:160]})"
    ctype = r.headers.get("Content-Type", "")
    if "json" in ctype:
        try:
            body = r.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and ("description" in body or "error" in body):
            desc = body.get("description") or body.get("error", {}).get("message", "")
            return f"{r.status_code} {desc!r}"
    return f"{r.status_code} ({ctype or 'no Content-Type'}, {len(r.content)} bytes)"


def _status(r) -> int | None:
    return None if isinstance(r, Exception) else r.status_code


class Prober:
    """What the probes act through. Every name starts with `prefix`, which the run records
    (harness.writes) before the first write: `heal` finds what a killed run left. Each
    resource is also kept here to be deleted right after its probe."""

    def __init__(self, target, prefix: str, writes, allow_quota_changes: bool = False):
        self.target = target
        self.prefix = prefix
        self.writes = writes  # harness.writes.Writes of the target
        self.base = target.node().url.rstrip("/")
        self.allow_quota_changes = allow_quota_changes
        self.made: list[tuple[str, str, str]] = []  # (kind, ref, role that deletes it)
        self._project_ids: dict[str, str] = {}

    # calls
    def url(self, path_or_ref: str) -> str:
        if path_or_ref.startswith("http"):  # a Barbican href: its /v1/... on our endpoint
            return self.base + "/v1/" + path_or_ref.split("/v1/", 1)[1]
        return self.base + path_or_ref

    def call(self, method: str, path: str, role: str | None = None, *, timeout: float = HTTP_TIMEOUT, **kw):
        """One request; the response, or the exception when there was none (no raise)."""
        role = role or self.writer
        try:
            return self.target.session(role).request(self.url(path), method, raise_exc=False,
                                                     timeout=timeout, **kw)
        except Exception as exc:  # noqa: BLE001 - no response is an observation, not a crash
            return exc

    def must(self, r, *statuses: int, what: str):
        """A set-up call's answer, or NotCheckable naming the call."""
        if _status(r) not in statuses:
            raise NotCheckable(f"{what}: {describe(r)}")
        return r

    # roles
    @property
    def writer(self) -> str:
        return self.target.writer_role

    def role(self, purpose: str, why: str) -> str:
        role = POLICY_ROLES[self.target.policy][purpose]
        if role not in self.target.roles:
            raise NotCheckable(f"needs role '{role}' in the targets file ({why})")
        return role

    def project_id(self, role: str) -> str:
        if role not in self._project_ids:
            try:
                self._project_ids[role] = self.target.session(role).get_project_id()
            except Exception as exc:  # noqa: BLE001 - keystoneauth raises several kinds
                raise NotCheckable(f"could not authenticate as '{role}': {type(exc).__name__}: {exc}") from None
        return self._project_ids[role]

    def order_deleter(self) -> str:
        """Who may delete the probe's orders: the writer under secure RBAC, the project admin
        (in the writer's project) under Barbican's legacy policy."""
        if self.target.policy == "secure-rbac":
            return self.writer
        role = self.role("project_admin", "Barbican's legacy policy lets only a project admin delete orders, "
                                          "and the probe deletes the orders it makes")
        if self.project_id(role) != self.project_id(self.writer):
            raise NotCheckable(f"role '{role}' is not in the writer's project ({self.project_id(self.writer)}); "
                               "it could not delete the probe's orders")
        return role

    # resources, named under the prefix
    def name(self, tag: str) -> str:
        return f"{self.prefix}-{tag}"

    def track(self, kind: str, ref: str, deleter: str | None = None) -> str:
        self.made.append((kind, ref, deleter or self.writer))
        return ref

    def create(self, kind: str, body: dict, deleter: str | None = None):
        """POST a resource (as the writer; `deleter` deletes it); the response. Ctrl-C waits for
        the answer, so what the POST made is known and deleted."""
        with _ctrl_c_deferred():
            r = self.call("POST", f"/v1/{kind}s", json=body)
            if _status(r) in (201, 202):
                self.track(kind, r.json()[f"{kind}_ref"], deleter)
        return r

    def secret(self, tag: str, **body) -> str:
        body.setdefault("name", self.name(tag))
        if body.pop("metadata_only", False) is False:
            body.setdefault("payload", _rand.token_hex(16))
            body.setdefault("payload_content_type", "text/plain")
        return self.must(self.create("secret", body), 201, what="creating a probe secret").json()["secret_ref"]

    def container(self, tag: str) -> str:
        r = self.create("container", {"name": self.name(tag), "type": "generic", "secret_refs": []})
        return self.must(r, 201, what="creating a probe container").json()["container_ref"]

    def order(self, tag: str, kind: str, meta: dict, deleter: str):
        """POST an order (deleted later as `deleter`); the response."""
        return self.create("order", {"type": kind, "meta": {"name": self.name(tag), **meta}}, deleter)

    def wait_order(self, ref: str, timeout: float = ORDER_WAIT_S) -> dict:
        """The order once it left PENDING (or at the deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            order = self.must(self.call("GET", ref), 200, what=f"reading order {ref}").json()
            if order["status"] != "PENDING" or time.monotonic() > deadline:
                return order
            time.sleep(0.5)

    def made_by(self, order: dict) -> list[tuple[str, str]]:
        """What an order generated: its secret, or its container and the container's secrets."""
        made = [("secret", order["secret_ref"])] if order.get("secret_ref") else []
        if order.get("container_ref"):
            made.append(("container", order["container_ref"]))
            c = self.call("GET", order["container_ref"])
            if _status(c) == 200:
                made += [("secret", s["secret_ref"]) for s in c.json().get("secret_refs", [])]
        return made

    # project quotas
    @contextlib.contextmanager
    def quota_set(self, admin: str, project: str, **quotas):
        """The project's quotas changed as `admin` for the block, then restored. The original is
        recorded (harness.writes) before the change: `heal` restores it after a kill."""
        from harness.writes import restore_quota

        path = f"/v1/project-quotas/{project}"
        before = self.must(self.call("GET", path, role=admin), 200, 404, what="reading the project's quotas")
        original = before.json()["project_quotas"] if before.status_code == 200 else None
        self.writes.quota(self.prefix, project, admin, original)
        try:
            kept = {k: v for k, v in (original or {}).items() if v is not None}
            self.must(self.call("PUT", path, role=admin, json={"project_quotas": {**kept, **quotas}}), 204,
                      what="setting the project's quota")
            yield
        finally:
            problem = restore_quota(self.target, project, admin, original)
            if problem:  # left recorded: the run's clean-up and `heal` try again
                raise NotCheckable(f"could not restore the project quota: {problem}")
            self.writes.quota_restored(self.prefix)

    # clean-up
    def cleanup(self) -> tuple[int, list[str]]:
        """Delete what the probes made (an order with what it generated); (deleted, problems)."""
        made, self.made = self.made, []
        for kind, ref, role in list(made):
            order = self.call("GET", ref, role=role) if kind == "order" else None
            try:
                if order is not None and _status(order) == 200:
                    made += [(k, r, self.writer) for k, r in self.made_by(order.json())]
            except ValueError:  # not JSON: what it made is still named under the prefix (final sweep)
                pass
        rank = {"container": 0, "order": 1, "secret": 2}  # a container holds references to secrets
        deleted, problems = 0, []
        for kind, ref, role in sorted(dict.fromkeys(made), key=lambda m: rank[m[0]]):
            r = self.call("DELETE", ref, role=role, params={"force": "true"} if kind == "secret" else None)
            if _status(r) in (204, 404):
                deleted += 1
            else:
                problems.append(f"{kind} {ref}: DELETE {describe(r)}")
        return deleted, problems


# -- the probes --------------------------------------------------------------------------------
PROBES: dict[str, Callable[[Prober], list[Observation]]] = {}


def probe(bug_id: str):
    def register(fn):
        PROBES[bug_id] = fn
        return fn
    return register


def _case(r, case: str, seen: Callable[[object], bool], fine: Callable[[object], bool]) -> Observation:
    if seen(r):
        return Observation(case, SEEN, describe(r))
    if fine(r):
        return Observation(case, NOT_SEEN, describe(r))
    return Observation(case, UNKNOWN, f"unexpected answer {describe(r)}")


def _concurrent(case: str, calls: int, threads: int, call: Callable[[int], object], ok: int) -> Observation:
    """Up to `calls` concurrent calls on `threads` threads, stopping at the first answer that
    is a 5xx or no answer (the bug: the rest of the budget is not needed)."""
    stop = threading.Event()

    def one(i: int):
        if stop.is_set():
            return None
        r = call(i)
        if (_status(r) or 500) >= 500:
            stop.set()
        return r

    with ThreadPoolExecutor(threads) as pool:
        try:
            answers = [r for r in pool.map(one, range(calls)) if r is not None]
        finally:
            stop.set()  # on Ctrl-C too: queued calls return at once
    codes = Counter(str(_status(r) or "no response") for r in answers)
    where = f"{len(answers)} concurrent calls on {threads} threads: {dict(codes)}"
    failed = [r for r in answers if (_status(r) or 500) >= 500]
    if failed:
        return Observation(case, SEEN, f"{where}; first failure: {describe(failed[0])}")
    if codes.get(str(ok)) == len(answers):
        return Observation(case, NOT_SEEN, f"{where} (a race: not reproduced, which is no proof)")
    return Observation(case, UNKNOWN, where)


# Two secrets with 8 keys each: measured 5-10% deadlocks per PUT on one node (16 secrets with
# 2 keys: 0-6%), so 400 PUTs all but always find it where it exists, usually in the first second.
METADATA_PUTS, METADATA_THREADS, METADATA_SECRETS, METADATA_KEYS = 400, 8, 2, 8


@probe("metadata-put-deadlock")
def _metadata_put_deadlock(p: Prober) -> list[Observation]:
    refs = [p.secret(f"meta-{i}") for i in range(METADATA_SECRETS)]

    def put(i: int):
        keys = {f"key-{k}": _rand.token_hex(4) for k in range(METADATA_KEYS)}
        return p.call("PUT", refs[i % len(refs)] + "/metadata", timeout=30, json={"metadata": keys})

    return [_concurrent(f"PUT .../metadata of {len(refs)} secrets", METADATA_PUTS, METADATA_THREADS, put, ok=201)]


@probe("payload-wildcard-content-type")
def _payload_wildcard_content_type(p: Prober) -> list[Observation]:
    ref = p.secret("ctype")  # text/plain
    r = p.call("GET", ref + "/payload", headers={"Accept": "*/*"})
    if _status(r) != 200:
        return [Observation("GET payload, Accept */*", UNKNOWN, describe(r))]
    ctype = r.headers.get("Content-Type", "")
    outcome = SEEN if ctype.split(";")[0].strip() == "*/*" else NOT_SEEN
    return [Observation("GET payload, Accept */*", outcome, f"200 with Content-Type {ctype!r} "
                                                             "(the secret is text/plain)")]


def _listed(p: Prober, name: str, ref: str) -> tuple[bool | None, str]:
    r = p.call("GET", "/v1/secrets", params={"name": name})
    if _status(r) != 200:
        return None, describe(r)
    ids = [s["secret_ref"].rsplit("/", 1)[-1] for s in r.json().get("secrets", [])]
    found = ref.rsplit("/", 1)[-1] in ids
    return found, f"?name={name} lists {len(ids)} secret(s), {'including' if found else 'not'} the probe's"


@probe("name-filter-plus-sign")
def _name_filter_plus_sign(p: Prober) -> list[Observation]:
    name = p.name("plus+sign")
    found, evidence = _listed(p, name, p.secret("", name=name))
    outcome = UNKNOWN if found is None else (NOT_SEEN if found else SEEN)
    return [Observation("name with '+'", outcome, evidence)]


@probe("name-filter-like-wildcards")
def _name_filter_like_wildcards(p: Prober) -> list[Observation]:
    name = p.name("wild")
    ref = p.secret("", name=name)
    found, evidence = _listed(p, name.replace("-", "_"), ref)
    outcome = UNKNOWN if found is None else (SEEN if found else NOT_SEEN)
    return [Observation(f"'_' for '-' in {name}", outcome, evidence)]


@probe("base64-payload-not-validated")
def _base64_payload_not_validated(p: Prober) -> list[Observation]:
    r = p.create("secret", {"name": p.name("b64-one-step"), "payload": "###",
                            "payload_content_type": "application/octet-stream", "payload_content_encoding": "base64"})
    one = _case(r, "one-step POST of '###' as base64", lambda r: _status(r) == 201, lambda r: _status(r) == 400)
    ref = p.secret("b64-two-step", metadata_only=True)
    r = p.call("PUT", ref, data=b"###", headers={"Content-Type": "application/octet-stream",
                                                 "Content-Encoding": "base64"})
    two = _case(r, "two-step PUT of '###' as base64", lambda r: _status(r) == 204, lambda r: _status(r) == 400)
    return [one, two]


@probe("transport-key-get-500")
def _transport_key_get_500(p: Prober) -> list[Observation]:
    r = p.call("GET", f"/v1/transport_keys/{uuid.uuid4()}")
    return [_case(r, "GET of an unknown transport key", lambda r: _status(r) == 500, lambda r: _status(r) == 404)]


@probe("transport-keys-method-no-response")
def _transport_keys_method_no_response(p: Prober) -> list[Observation]:
    # Nothing is written: PUT is not a method of this resource (405 when the bug is fixed).
    r = p.call("PUT", "/v1/transport_keys", json={})
    no_response = isinstance(r, Exception) and "Timeout" not in type(r).__name__
    return [_case(r, "PUT /v1/transport_keys", lambda r: no_response or (_status(r) or 0) >= 500,
                  lambda r: _status(r) == 405)]


@probe("unknown-subpath-500")
def _unknown_subpath_500(p: Prober) -> list[Observation]:
    secret, container = p.secret("subpath"), p.container("subpath")
    cases = [("GET {container}/bogus", "GET", container + "/bogus", None),
             ("GET {secret}/payload/extra", "GET", secret + "/payload/extra", None),
             ("GET {secret}/metadata/key/extra", "GET", secret + "/metadata/key/extra", None),
             ("PUT {secret}/metadata/key/extra", "PUT", secret + "/metadata/key/extra", {"key": "key", "value": "v"})]
    return [_case(p.call(method, ref, json=body), case, lambda r: _status(r) == 500, lambda r: _status(r) == 404)
            for case, method, ref, body in cases]


@probe("metadata-409-message-truncated")
def _metadata_409_message_truncated(p: Prober) -> list[Observation]:
    ref = p.secret("meta409")
    p.must(p.call("POST", ref + "/metadata", json={"key": "url-key", "value": "v"}), 201,
           what="adding a metadata key to the probe secret")
    r = p.call("PUT", ref + "/metadata/url-key", json={"key": "body-key", "value": "x"})
    if _status(r) != 409:
        return [Observation("PUT with a mismatching key", UNKNOWN, f"expected 409, got {describe(r)}")]
    complete = "request url" in (r.json().get("description") or "")
    return [Observation("PUT with a mismatching key", NOT_SEEN if complete else SEEN, describe(r))]


@probe("orders-bypass-quotas")
def _orders_bypass_quotas(p: Prober) -> list[Observation]:
    needs = [] if p.allow_quota_changes else [
        "sets the writer's project quota secrets=0 for a few seconds (restored after): run with "
        "--allow-quota-changes"]
    try:
        admin, deleter = p.role("quota_admin", "project quotas are set by the quota admin"), p.order_deleter()
    except NotCheckable as exc:
        needs.append(str(exc))
    if needs:
        raise NotCheckable("; ".join(needs))
    with p.quota_set(admin, p.project_id(p.writer), secrets=0):
        control = p.create("secret", {"name": p.name("quota-control"), "payload": _rand.token_hex(8),
                                      "payload_content_type": "text/plain"})
        if _status(control) == 201:
            return [Observation("direct POST with secrets quota 0", UNKNOWN,
                                "201: the quota is not enforced here at all, so orders cannot be compared")]
        if _status(control) != 403:
            return [Observation("direct POST with secrets quota 0", UNKNOWN, describe(control))]
        r = p.order("quota-order", "key", {"algorithm": "aes", "bit_length": 256, "mode": "cbc"}, deleter)
        if _status(r) != 202:
            return [_case(r, "key order with secrets quota 0", lambda r: False, lambda r: _status(r) == 403)]
        order = p.wait_order(r.json()["order_ref"])
    made = order.get("secret_ref")
    if order["status"] == "ACTIVE" and made:
        return [Observation("key order with secrets quota 0", SEEN,
                            f"direct POST 403, but the order went ACTIVE and made secret {made}")]
    if order["status"] == "ERROR":
        return [Observation("key order with secrets quota 0", NOT_SEEN,
                            f"order ERROR {order.get('error_status_code')} {order.get('error_reason')!r}")]
    return [Observation("key order with secrets quota 0", UNKNOWN, f"order still {order['status']}")]


UNSUPPORTED_ORDERS = [("rsa-3072", "asymmetric", {"algorithm": "rsa", "bit_length": 3072}),
                      ("aes-512", "key", {"algorithm": "aes", "bit_length": 512}),
                      ("hmacsha512-512", "key", {"algorithm": "hmacsha512", "bit_length": 512})]


@probe("order-unsupported-generation-500")
def _order_unsupported_generation_500(p: Prober) -> list[Observation]:
    deleter = p.order_deleter()
    submitted = [(spec, p.order(f"order-{spec}", kind, meta, deleter)) for spec, kind, meta in UNSUPPORTED_ORDERS]
    out = []
    for spec, r in submitted:  # all submitted first: with a worker they run in parallel
        if _status(r) != 202:
            out.append(_case(r, spec, lambda r: (_status(r) or 0) >= 500, lambda r: 400 <= (_status(r) or 0) < 500))
            continue
        order = p.wait_order(r.json()["order_ref"])
        code = str(order.get("error_status_code", ""))
        evidence = f"order {order['status']}" + (f" {code} {order.get('error_reason')!r}" if code else "")
        if order["status"] == "ACTIVE":
            out.append(Observation(spec, NOT_APPLICABLE, evidence + " (the backend generates it)"))
        elif order["status"] == "ERROR":
            out.append(Observation(spec, SEEN if code.startswith("5") else NOT_SEEN, evidence))
        else:
            out.append(Observation(spec, UNKNOWN, evidence))
    return out


KMIP_SECRETS, KMIP_READS, KMIP_THREADS, KMIP_QUIET_S = 4, 40, 8, 30.0


@probe("kmip-shared-client-threads")
def _kmip_shared_client_threads(p: Prober) -> list[Observation]:
    default = p.target.backends[0] if p.target.backends else "unknown"
    if default != "kmip":
        raise NotCheckable(f"does not apply: the default store is {default} (the targets file's `backends`, "
                           "simple_crypto when it says none); the bug is in the KMIP store")
    refs = [p.secret(f"kmip-{i}", payload=base64.b64encode(_rand.token_bytes(16)).decode(),
                     payload_content_type="application/octet-stream", payload_content_encoding="base64")
            for i in range(KMIP_SECRETS)]

    def read(i: int):  # a read the broken connection hangs counts as failed after 5 s
        return p.call("GET", refs[i % len(refs)] + "/payload", timeout=5,
                      headers={"Accept": "application/octet-stream"})

    seen = _concurrent(f"payload reads of {len(refs)} secrets", KMIP_READS, KMIP_THREADS, read, ok=200)
    # Reads this side gave up on still run in the API process, on the shared client: a
    # request sent meanwhile (the clean-up's DELETEs) fails with 500 too. Measured: the
    # node serves again within seconds. Clean up once it does, and say how long it took.
    started = time.monotonic()
    try:
        wait_until(lambda: all(_status(read(0)) == 200 for _ in range(2)), timeout=KMIP_QUIET_S, interval=0.5,
                   what="sequential KMIP reads answer 200 again")
        settled = f"; sequential reads answered 200 again {time.monotonic() - started:.1f} s later"
    except HarnessError:
        settled = f"; sequential reads still failed {KMIP_QUIET_S:g} s later (the clean-up may leave secrets)"
    return [Observation(seen.case, seen.outcome, seen.evidence + settled)]
