"""Locust users modelled on Barbican's real consumers.

Run only by harness.load_driver.driver (`barbican-harness load`), as its own process: Locust
monkey-patches the process with gevent, so it must never be imported by pytest or by
harness modules. The configuration comes from $BARBICAN_LOAD_CONFIG (see loadsupport).

Users (weights from the configuration; 0 disables a class):
  octavia   Octavia-like service user: reads tenants' TLS certificate containers and their
            secrets through a read ACL (container, then metadata + payload of each member),
            sometimes registers itself as the container's consumer (a new listener).
  luks      Cinder/Nova-like: on each volume attach, fetches a volume's AES key (metadata,
            then payload); sometimes registers a secret consumer (microversion 1.1).
  crud      a tenant: create a secret (unique ledger name) → read it back through another
            node → set and read metadata → delete.
  orders    a tenant asking Barbican to generate keys: POST /orders, poll until ACTIVE, read
            the key, delete it; the order itself is deleted by the project admin (legacy
            policy lets only a project admin delete orders).
  store_get the raw store+get mix (bench/load_ceiling.py).

Every secret created or deleted goes through the integrity ledger (one JSONL file per
Locust process). A create is recorded as 'unknown' before it is sent and completed with
'ok' / 'failed' (HTTP answer) / 'unknown' (no answer): a process killed mid-request leaves
the honest 'unknown'. Requests go round-robin over every API node in rotation (one rotation
per Locust process, as behind a load balancer that takes a node out before it is stopped:
harness.load_driver.rotation; reads that check a write go to another node). Every request is counted per second in harness.load_driver.series.
"""

from __future__ import annotations

# Locust first: importing it monkey-patches the process with gevent, before anything
# else creates locks, sockets or threads.
from locust import FastHttpUser, between, events, task
from locust.runners import WORKER_REPORT_INTERVAL, MasterRunner, WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC

# isort: split
import base64
import itertools
import random
import secrets
import time
import uuid

import gevent
from loadsupport import LoadConfig, Node, TokenCache, on_node

from harness.ledger import Ledger, sha256
from harness.load_driver.series import SeriesRecorder, error_class

CFG = LoadConfig.from_env()
LEDGER = Ledger(CFG.ledger_dir)
TOKENS = TokenCache(CFG)
SERIES = SeriesRecorder(CFG.series_dir)
OCTET = {"Accept": "application/octet-stream"}
MICROVERSION_1_1 = {"OpenStack-API-Version": "key-manager 1.1"}
# uWSGI's http11-socket (how the harness serves Barbican and Keystone) keeps a worker
# thread on each keep-alive connection until the client closes it or it has been idle for
# socket-timeout (4 s); it ignores a client's "Connection: close". With more clients than
# threads per node, the surplus clients' requests wait seconds in the accept queue
# (measured: 10 keep-alive clients on 4 threads, p95 7.8 s instead of 0.15 s). So each
# user closes its connections after every request unless the configuration asks for
# keep-alive.
CONNECTION = {} if CFG.keepalive else {"Connection": "close"}
_user_numbers = itertools.count()
_round_robin = itertools.count(random.Random(CFG.seed).randrange(len(CFG.nodes)))


# -- statistics and lifecycle ------------------------------------------------------------
@events.request.add_listener
def _count(request_type, name, response_time, response_length, response=None, context=None,
           exception=None, start_time=None, **kwargs):
    response_time = response_time or 0.0
    start = start_time or (time.time() - response_time / 1000.0)
    failed = exception is not None
    cls = error_class(str(exception), getattr(response, "status_code", None)) if failed else None
    SERIES.add(start, name, request_type, response_time, failed, cls, (context or {}).get("node"))


def _flusher():
    while True:
        gevent.sleep(1.0)
        SERIES.flush()


@events.init.add_listener
def _init(environment, **kwargs):
    gevent.spawn(_flusher)


@events.test_start.add_listener
def _started(environment, **kwargs):
    if isinstance(environment.runner, WorkerRunner):
        return
    # The driver starts the fault timeline when the load really starts (after imports,
    # and in distributed mode once every worker is connected).
    if CFG.started_file:
        with open(CFG.started_file, "w") as f:
            f.write(repr(time.time()))
    if CFG.run_time:
        gevent.spawn(_end_after, environment, CFG.run_time)


def _end_after(environment, seconds: float) -> None:
    """The run-time limit (later when the driver stretches the load), done so that the final statistics are complete: Locust's own
    -t quits the master 0.5 s after telling the workers to quit, before their last
    reports arrive (measured: 72 of 455 requests missing from the merged totals), and its
    CSV writer only writes once a second. Here: stop the users (the master waits until
    every worker's users have stopped), wait for the workers' last periodic report and
    for one more CSV pass, then quit."""
    end = time.monotonic() + seconds
    while time.monotonic() < end + _stretched():
        gevent.sleep(min(1.0, max(0.05, end + _stretched() - time.monotonic())))
    runner = environment.runner
    runner.stop()
    if isinstance(runner, MasterRunner):
        gevent.sleep(WORKER_REPORT_INTERVAL + 0.5)
    gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.5)
    runner.quit()


def _stretched() -> float:
    """Seconds the driver asks the load to run longer (its timeline is late), capped."""
    if not CFG.stretch_file:
        return 0.0
    try:
        with open(CFG.stretch_file) as f:
            return min(max(0.0, float(f.read())), CFG.max_stretch)
    except (OSError, ValueError):
        return 0.0


@events.test_stop.add_listener
def _stopped(environment, **kwargs):
    SERIES.flush()


@events.quitting.add_listener
def _quitting(environment, **kwargs):
    SERIES.flush()


# -- the common client -------------------------------------------------------------------
class Result:
    def __init__(self, status: int, response=None, error: str | None = None, expected: bool = False):
        self.status = status
        self.response = response
        self.error = error
        self.ok = expected and error is None

    @property
    def outcome(self) -> str:
        """Ledger outcome (ledger.classify semantics): an HTTP answer refusing the write is
        'failed'; no answer (refused, reset, timeout) is 'unknown'."""
        if self.ok:
            return "ok"
        return "failed" if self.status >= 400 else "unknown"

    def json(self) -> dict:
        return self.response.json()

    @property
    def content(self) -> bytes:
        return self.response.content or b""


def _describe(resp) -> str:
    try:
        body = resp.json()
        text = body.get("description") or body.get("title") or ""
    except Exception:  # noqa: BLE001 - any body
        text = (resp.text or "")[:120]
    return " ".join(str(text).split())[:160]


def _exception_text(err) -> str:
    """'<class>: <detail>' of a request that got no HTTP answer; geventhttpclient wraps
    the cause (refused, reset, timed out) in RetriesExceeded."""
    cause = getattr(err, "original", None) or err
    if isinstance(cause, str):
        return f"{'TimeoutError' if 'timed out' in cause else 'ConnectionError'}: {cause[:160]}"
    return f"{type(cause).__name__}: {str(cause)[:160]}"


def expect_sha(expected: str):
    def check(resp) -> str | None:
        got = sha256(resp.content or b"")
        return None if got == expected else f"payload_mismatch: sha256 {got[:12]} != {expected[:12]}"
    return check


class BarbicanUser(FastHttpUser):
    abstract = True
    host = CFG.nodes[0].url
    network_timeout = CFG.timeout
    connection_timeout = CFG.timeout
    wait_time = between(*CFG.wait)
    role_key = "writer"

    def on_start(self):
        runner = self.environment.runner
        worker = getattr(runner, "worker_index", 0) if isinstance(runner, WorkerRunner) else 0
        # The seed chooses operations (which container, whether to add a consumer); payload
        # bytes come from secrets.token_bytes: the seed is printed in result.json and the
        # report, and must not rebuild a stored secret.
        self.rng = random.Random(f"{CFG.seed}:{worker}:{type(self).__name__}:{next(_user_numbers)}")

    def node(self) -> Node:
        """The next API node in rotation, round-robin over every request of this process
        (what a load balancer in front of the nodes does)."""
        serving = CFG.rotation.current()
        return serving[next(_round_robin) % len(serving)]

    @staticmethod
    def other(node: Node) -> Node:
        """Another node in rotation than `node`: reads that must cross nodes."""
        serving = CFG.rotation.current()
        i = serving.index(node) if node in serving else -1
        return serving[(i + 1) % len(serving)]

    @property
    def role(self) -> str:
        return CFG.roles[self.role_key]

    def _hang_up(self) -> None:
        """Close this user's idle connections (keeping its HTTP clients and their pools)."""
        if CFG.keepalive:
            return
        pool = self.client.client.clientpool
        try:
            for http_client in pool.clients.values():
                queue = http_client._connection_pool._socket_queue
                while not queue.empty():
                    queue.get(block=False).close()
        except AttributeError:  # another geventhttpclient layout: drop the clients altogether
            pool.close()

    def _post_token(self, url: str, body: dict):
        try:
            return self._token_request(url, body)
        finally:
            self._hang_up()

    def _token_request(self, url: str, body: dict):
        with self.client.request("POST", url, name="keystone.token", json=body, catch_response=True,
                                 context={"node": "keystone"}) as resp:
            status = resp.status_code or 0
            if status == 201:
                resp.success()
                return status, resp.headers or {}, resp.json()
            resp.failure(f"HTTP {status}: {_describe(resp)}" if status else _exception_text(getattr(resp, "error", None)))
            return status, {}, None

    def call(self, method: str, url: str, name: str, *, expect=(200,), role_key: str | None = None,
             json=None, headers: dict | None = None, check=None) -> Result:
        try:
            return self._call(method, url, name, expect, role_key, json, headers, check)
        finally:
            self._hang_up()

    def _call(self, method, url, name, expect, role_key, json, headers, check) -> Result:
        role = CFG.roles[role_key or self.role_key]
        token = TOKENS.get(role, self._post_token)
        if token is None:
            return Result(0, error="no_token: Keystone gave no token")
        node = CFG.node_by_url(url)
        hdrs = {"X-Auth-Token": token.value, **CONNECTION, **(headers or {})}
        with self.client.request(method, url, name=name, json=json, headers=hdrs, catch_response=True,
                                 context={"node": node.name if node else "?"}) as resp:
            status = resp.status_code or 0
            if status in expect:
                problem = check(resp) if check else None
                if problem:
                    resp.failure(problem)
                    return Result(status, resp, problem, True)
                resp.success()
                return Result(status, resp, None, True)
            if status == 0:
                text = _exception_text(getattr(resp, "error", None))
            else:
                if status == 401:
                    TOKENS.invalidate(role, token.value)
                text = f"HTTP {status}: {_describe(resp)}"
            resp.failure(text)
            return Result(status, resp, text)

    def synthetic(self, name: str, started: float, error: str | None, node: str) -> None:
        """A derived measurement (e.g. time until an order is ACTIVE) in the statistics."""
        self.environment.events.request.fire(
            request_type="DERIVED", name=name, response_time=(time.time() - started) * 1000.0,
            response_length=0, response=None, context={"node": node},
            exception=Exception(error) if error else None, start_time=started)

    # -- ledger-aware operations --------------------------------------------------------------
    def store(self, kind: str, payload: bytes, req_name: str, **fields) -> tuple[str, str | None, Node]:
        """POST a secret with a unique ledger name; returns (name, ref or None, node)."""
        name = LEDGER.new_name(kind)
        node = self.node()
        secret_type = fields.get("secret_type", "opaque")
        LEDGER.created(name, payload, self.role, node.name, "unknown", secret_type=secret_type,
                       error="in flight", tags=["load"])
        body = {"name": name, "payload": base64.b64encode(payload).decode(),
                "payload_content_type": "application/octet-stream", "payload_content_encoding": "base64",
                **fields}
        r = self.call("POST", node.url + "/v1/secrets", req_name, expect=(201,), json=body)
        ref = None
        if r.ok:
            try:
                ref = r.json().get("secret_ref")
            except ValueError:
                pass
        outcome = "ok" if ref else ("unknown" if r.ok else r.outcome)  # 201 without a ref: unknown
        LEDGER.created(name, payload, self.role, node.name, outcome, ref=ref, secret_type=secret_type,
                       error=r.error, tags=["load"])
        return name, ref, node

    def delete(self, ref: str, name: str, req_name: str) -> None:
        """DELETE until the answer is definite: an unanswered delete (node killed mid-request)
        is retried through the next node, where 404 proves the first one went through."""
        deadline = time.time() + CFG.delete_retry_s
        unanswered = False
        while True:
            node = self.node()
            r = self.call("DELETE", on_node(ref, node), req_name, expect=(204, 404) if unanswered else (204,))
            if r.ok:
                LEDGER.deleted(name, ref, self.role, node.name, "ok",
                               error="404 after an unanswered delete" if r.status == 404 else None)
                return
            if r.status >= 400:
                LEDGER.deleted(name, ref, self.role, node.name, "failed", error=r.error)
                return
            unanswered = True
            if time.time() > deadline:
                LEDGER.deleted(name, ref, self.role, node.name, "unknown", error=r.error)
                return
            time.sleep(0.5)


# -- the consumers ------------------------------------------------------------------------
class OctaviaTLS(BarbicanUser):
    """Octavia's barbican_acl cert manager: the service user reads a tenant's certificate
    container and each member secret (metadata, then payload) on listener create/failover."""

    role_key = "service"

    @task
    def load_balancer_tls(self):
        containers = CFG.fixtures["containers"]
        if not containers:
            return
        c = self.rng.choice(containers)
        r = self.call("GET", on_node(c["ref"], self.node()), "octavia.container")
        if not r.ok:
            return
        served = {s["name"]: s["secret_ref"] for s in r.json().get("secret_refs", [])}
        for member, meta in c["secrets"].items():
            node = self.node()
            ref = on_node(served.get(member, meta["ref"]), node)
            if self.call("GET", ref, "octavia.secret").ok:
                self.call("GET", ref + "/payload", "octavia.payload", headers=OCTET, check=expect_sha(meta["sha256"]))
        if self.rng.random() < CFG.consumer_probability:
            body = {"name": "octavia", "URL": f"lb-{uuid.UUID(int=self.rng.getrandbits(128))}"}
            url = on_node(c["ref"], self.node()) + "/consumers"
            if self.call("POST", url, "octavia.consumer_add", json=body).ok:
                self.call("DELETE", on_node(c["ref"], self.node()) + "/consumers", "octavia.consumer_remove", json=body)


class VolumeAttach(BarbicanUser):
    """Nova attaching a LUKS volume through castellan: GET the key's metadata, then its
    payload; Cinder/Nova register themselves as the key's consumer on some attaches."""

    role_key = "luks"

    @task
    def attach(self):
        keys = CFG.fixtures["luks_keys"]
        if not keys:
            return
        k = self.rng.choice(keys)
        ref = on_node(k["ref"], self.node())
        if not self.call("GET", ref, "luks.key_meta").ok:
            return
        self.call("GET", ref + "/payload", "luks.key_payload", headers=OCTET, check=expect_sha(k["sha256"]))
        if self.rng.random() < CFG.consumer_probability:
            body = {"service": "nova", "resource_type": "instance",
                    "resource_id": str(uuid.UUID(int=self.rng.getrandbits(128)))}
            url = on_node(k["ref"], self.node()) + "/consumers"
            if self.call("POST", url, "luks.consumer_add", json=body, headers=MICROVERSION_1_1).ok:
                self.call("DELETE", on_node(k["ref"], self.node()) + "/consumers", "luks.consumer_remove",
                          json=body, headers=MICROVERSION_1_1)


class SecretCrud(BarbicanUser):
    """A tenant's secret life cycle: create → read back elsewhere → metadata → delete."""

    role_key = "writer"

    @task
    def crud(self):
        payload = secrets.token_bytes(48)
        name, ref, node = self.store("load", payload, "secret.create")
        if ref is None:
            return
        self.call("GET", on_node(ref, self.other(node)) + "/payload", "secret.get_payload", headers=OCTET,
                  check=expect_sha(sha256(payload)))
        meta = {"metadata": {"purpose": "load", "tenant-tag": name[-6:]}}
        self.call("PUT", on_node(ref, self.node()) + "/metadata", "secret.put_metadata", expect=(201,), json=meta)
        self.call("GET", on_node(ref, self.node()) + "/metadata", "secret.get_metadata")
        self.delete(ref, name, "secret.delete")


class KeyOrders(BarbicanUser):
    """A tenant ordering a generated AES key (what castellan does for every encrypted
    volume Cinder creates), then deleting it; the project admin deletes the order."""

    role_key = "writer"

    @task
    def key_order(self):
        # Named outside the ledger's prefix until confirmed: its payload (and so its
        # sha256) is known only once the key is read, so an order that never finishes
        # must not look like an unexpected secret to the checker.
        name = f"order-{LEDGER.prefix}-{self.rng.getrandbits(48):012x}"
        node = self.node()
        started = time.time()
        meta = {"name": name, "algorithm": "aes", "bit_length": 256, "mode": "cbc",
                "payload_content_type": "application/octet-stream"}
        r = self.call("POST", node.url + "/v1/orders", "order.create", expect=(202,), json={"type": "key", "meta": meta})
        if not r.ok:
            return
        order_ref = r.json()["order_ref"]
        secret_ref, problem = None, None
        deadline = started + CFG.order_poll_timeout
        while True:
            g = self.call("GET", on_node(order_ref, self.node()), "order.get")
            status = g.json().get("status") if g.ok else None
            if status == "ACTIVE":
                secret_ref = g.json().get("secret_ref")
                break
            if status == "ERROR":
                problem = f"order_error: {g.json().get('error_reason', '')}"
                break
            if time.time() > deadline:
                problem = f"orders_stalled: {status or 'unreadable'} after {CFG.order_poll_timeout:.0f} s"
                break
            time.sleep(0.5)
        self.synthetic("order.active", started, problem, node.name)
        if secret_ref:
            p = self.call("GET", on_node(secret_ref, self.node()) + "/payload", "order.secret_payload", headers=OCTET)
            if p.ok:
                LEDGER.created(name, p.content, self.role, node.name, "ok", ref=secret_ref,
                               secret_type="symmetric", tags=["order"])
            self.delete(secret_ref, name, "order.secret_delete")
        self.call("DELETE", on_node(order_ref, self.node()), "order.delete", expect=(204,), role_key="order_admin")


class StoreGet(BarbicanUser):
    """The raw store+get mix: the ceiling benchmark's workload."""

    role_key = "writer"

    @task
    def store_get(self):
        payload = secrets.token_bytes(32)
        _, ref, node = self.store("ceiling", payload, "secret.create")
        if ref is not None:
            self.call("GET", on_node(ref, self.other(node)) + "/payload", "secret.get_payload", headers=OCTET,
                      check=expect_sha(sha256(payload)))


_CLASSES = {"octavia": OctaviaTLS, "luks": VolumeAttach, "crud": SecretCrud, "orders": KeyOrders,
            "store_get": StoreGet}
for _key, _cls in _CLASSES.items():
    _weight = int(CFG.weights.get(_key, 0))
    _cls.weight = max(_weight, 1)
    _cls.abstract = _weight <= 0
# Locust collects every User class among the module's globals: no alias may stay behind.
del _key, _cls, _weight
