"""The Toxiproxy-compatible proxy (harness.proxy), driven through toxiproxy-python.

Real sockets on 127.0.0.1, real upstreams started here, no fakes. Timing checks are
lower bounds (a toxic must delay at least this much); the few upper bounds are loose
(seconds where a millisecond is expected) so a loaded CI machine cannot flake them.
Every socket has a timeout: nothing here can hang.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from contextlib import contextmanager

import psutil
import pytest
import requests
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from harness.context import EnvSecrets, RunContext
from harness.ports import free_port, port_is_free
from harness.proxy import ServerThread
from harness.services.proxy import ExternalToxiproxy, ToxiproxyServer, proxy_for, toxiproxy_client
from harness.topology import Topology

T = 5.0  # s, timeout of every socket operation and API call
BLOB = bytes(range(256)) * 800  # 204,800 bytes


# -- upstreams ---------------------------------------------------------------------------

class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Echo(socketserver.BaseRequestHandler):
    """Echoes until the client half-closes, then closes."""

    def handle(self):
        self.request.settimeout(T)
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass


class _Blob(socketserver.BaseRequestHandler):
    """Sends BLOB and closes."""

    def handle(self):
        self.request.settimeout(T)
        try:
            self.request.sendall(BLOB)
        except OSError:
            pass


@contextmanager
def _upstream(handler):
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(T)


@pytest.fixture
def echo():
    with _upstream(_Echo) as addr:
        yield addr


@pytest.fixture
def blob():
    with _upstream(_Blob) as addr:
        yield addr


@pytest.fixture
def server():
    with ServerThread(seed=1234) as s:
        yield s


@pytest.fixture
def client(server):
    return toxiproxy_client(server.url, timeout=T)


# -- client-side helpers -----------------------------------------------------------------

def addr(proxy) -> tuple[str, int]:
    host, _, port = proxy.listen.rpartition(":")
    return host, int(port)


def connect(proxy) -> socket.socket:
    return socket.create_connection(addr(proxy), timeout=T)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            break
        out += data
    return out


def recv_all(sock: socket.socket) -> bytes:
    """Everything until EOF."""
    out = b""
    while data := sock.recv(65536):
        out += data
    return out


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> float:
    start = time.monotonic()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return time.monotonic() - start


def echo_once(proxy, payload: bytes = b"hello, world") -> bytes:
    """Send, half-close, read all: what a connection delivers end to end."""
    with connect(proxy) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


def api(server, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, server.url + path, timeout=T, **kw)


# -- data through the proxy --------------------------------------------------------------

def test_version_and_empty(server, client):
    body = api(server, "GET", "/version").json()
    assert body["version"].startswith("2.") and body["seed"] == 1234
    assert client.proxies() == {}
    assert client.running()


def test_create_and_pass_data(client, echo):
    proxy = client.create(upstream=echo, name="echo")
    assert proxy.enabled is True and proxy.listen.startswith("127.0.0.1:")
    assert not proxy.listen.endswith(":0")  # the port actually bound is reported
    assert echo_once(proxy, b"x" * 100_000) == b"x" * 100_000
    assert set(client.proxies()) == {"echo"}


def test_latency_adds_delay_both_directions(client, echo):
    proxy = client.create(upstream=echo, name="lat")
    proxy.add_toxic(type="latency", stream="upstream", attributes={"latency": 150})
    proxy.add_toxic(type="latency", stream="downstream", attributes={"latency": 150, "jitter": 20})
    with connect(proxy) as s:
        for _ in range(3):
            assert roundtrip(s) >= 0.150 + 0.130 - 0.005  # 5 ms: coarse clocks


def test_latency_applies_to_live_connections(client, echo):
    proxy = client.create(upstream=echo, name="live")
    with connect(proxy) as s:
        roundtrip(s)
        proxy.add_toxic(type="latency", name="slow", attributes={"latency": 3000})
        started = time.monotonic()
        s.sendall(b"held")
        time.sleep(0.3)  # the chunk is now held by the toxic
        proxy.destroy_toxic("slow")  # removal releases it at once, as in Toxiproxy
        assert recv_exactly(s, 4) == b"held"
        assert time.monotonic() - started < 2.5  # well under the 3 s it would have taken
        proxy.add_toxic(type="latency", name="slow2", attributes={"latency": 300})
        assert roundtrip(s) >= 0.295


def test_timeout_closes_after_timeout(client, echo):
    proxy = client.create(upstream=echo, name="to")
    proxy.add_toxic(type="timeout", attributes={"timeout": 400})
    started = time.monotonic()
    with connect(proxy) as s:
        s.sendall(b"lost")
        assert recv_all(s) == b""  # nothing through, then EOF
    assert time.monotonic() - started >= 0.395


def test_timeout_zero_holds_until_removed(client, echo):
    proxy = client.create(upstream=echo, name="hold")
    proxy.add_toxic(type="timeout", name="blackhole", attributes={"timeout": 0})
    with connect(proxy) as s:
        s.sendall(b"lost")
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            s.recv(10)  # no data, no close
        s.settimeout(T)
        proxy.destroy_toxic("blackhole")  # healing closes what the toxic held
        assert recv_all(s) == b""
    assert echo_once(proxy) == b"hello, world"  # new connections pass again


def test_reset_peer_resets(client, echo):
    proxy = client.create(upstream=echo, name="rst")
    proxy.add_toxic(type="reset_peer", stream="upstream", attributes={"timeout": 100})
    with connect(proxy) as s:
        s.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            s.recv(10)


def test_limit_data_truncates(client, echo):
    proxy = client.create(upstream=echo, name="limit")
    proxy.add_toxic(type="limit_data", attributes={"bytes": 10})
    with connect(proxy) as s:
        s.sendall(b"0123456789abcdefghij")
        assert recv_all(s) == b"0123456789"


def test_bandwidth_slows_transfer(client, blob):
    proxy = client.create(upstream=blob, name="bw")
    with connect(proxy) as s:
        assert recv_all(s) == BLOB
    proxy.add_toxic(type="bandwidth", attributes={"rate": 200})  # 200 KB/s: ~1 s for 200 KB
    started = time.monotonic()
    with connect(proxy) as s:
        assert recv_all(s) == BLOB
    assert time.monotonic() - started >= 0.9


def test_slicer_delivers_same_bytes_in_pieces(client, echo):
    proxy = client.create(upstream=echo, name="slice")
    proxy.add_toxic(type="slicer", stream="upstream",
                    attributes={"average_size": 100, "size_variation": 20, "delay": 5000})
    payload = bytes(range(256)) * 40  # 10,240 bytes: ~100 pieces, 5 ms apart
    started = time.monotonic()
    with connect(proxy) as s:
        s.sendall(payload)
        got, reads = b"", 0
        while len(got) < len(payload):
            data = s.recv(65536)
            assert data, "closed early"
            got, reads = got + data, reads + 1
    assert got == payload
    assert reads > 1
    assert time.monotonic() - started >= 0.25


def test_slow_close_delays_close(client, blob):
    proxy = client.create(upstream=blob, name="slowclose")
    proxy.add_toxic(type="slow_close", attributes={"delay": 500})
    started = time.monotonic()
    with connect(proxy) as s:
        assert recv_all(s) == BLOB
    assert time.monotonic() - started >= 0.495


# -- proxy state -------------------------------------------------------------------------

def test_disable_refuses_and_enable_restores(client, echo):
    proxy = client.create(upstream=echo, name="down")
    live = connect(proxy)
    try:
        roundtrip(live)
        proxy.disable()
        assert client.get_proxy("down").enabled is False
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(addr(proxy), timeout=T).close()
        try:
            assert live.recv(10) == b""  # live connections are closed too
        except ConnectionResetError:
            pass
    finally:
        live.close()
    proxy.enable()
    assert client.get_proxy("down").listen == proxy.listen  # same port again
    assert echo_once(proxy) == b"hello, world"
    with proxy.down(), pytest.raises(ConnectionRefusedError):
        socket.create_connection(addr(proxy), timeout=T).close()
    assert echo_once(proxy) == b"hello, world"


def test_reset_enables_all_and_removes_toxics(server, client, echo):
    a = client.create(upstream=echo, name="a")
    b = client.create(upstream=echo, name="b")
    a.add_toxic(type="limit_data", attributes={"bytes": 1})
    b.add_toxic(type="latency", stream="upstream", attributes={"latency": 100})
    b.disable()
    assert client.reset()
    for name in ("a", "b"):
        p = client.get_proxy(name)
        assert p.enabled is True and p.toxics() == {}
    assert echo_once(a) == b"hello, world"
    assert echo_once(b) == b"hello, world"


def test_update_proxy_moves_upstream(server, client, echo, blob):
    proxy = client.create(upstream=echo, name="mover")
    r = api(server, "PATCH", "/proxies/mover", json={"upstream": blob})
    assert r.status_code == 200 and r.json()["upstream"] == blob and r.json()["listen"] == proxy.listen
    with connect(proxy) as s:
        assert recv_all(s) == BLOB


def test_delete_proxy_stops_listening(server, client, echo):
    proxy = client.create(upstream=echo, name="gone")
    assert proxy.destroy()
    assert api(server, "GET", "/proxies/gone").status_code == 404
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(addr(proxy), timeout=T).close()


def test_populate_creates_keeps_and_replaces(server, client, echo, blob):
    ports = [free_port(), free_port()]
    body = [{"name": "p1", "listen": f"127.0.0.1:{ports[0]}", "upstream": echo},
            {"name": "p2", "listen": f"localhost:{ports[1]}", "upstream": echo, "enabled": False}]
    r = api(server, "POST", "/populate", json=body)
    assert r.status_code == 201
    got = {p["name"]: p for p in r.json()["proxies"]}
    assert got["p1"]["enabled"] is True and got["p2"]["enabled"] is False
    assert got["p2"]["listen"] == f"127.0.0.1:{ports[1]}"
    # Same again: untouched (p1 keeps its toxic), p2 moved to another upstream: replaced.
    client.get_proxy("p1").add_toxic(type="latency", attributes={"latency": 1})
    body[1]["upstream"] = blob
    r = api(server, "POST", "/populate", json=body)
    assert r.status_code == 201
    assert len(client.get_proxy("p1").toxics()) == 1
    assert client.get_proxy("p2").upstream == blob
    # Input is checked before anything changes.
    r = api(server, "POST", "/populate", json=[{"name": "p3", "upstream": echo}, {"upstream": echo}])
    assert r.status_code == 400 and r.json() == {"error": "missing required field: name at proxy 2", "status": 400}
    assert client.get_proxy("p3") is None


def test_duplicate_proxy_is_409(server, client, echo):
    client.create(upstream=echo, name="dup")
    r = api(server, "POST", "/proxies", json={"name": "dup", "upstream": echo})
    assert r.status_code == 409 and r.json() == {"error": "proxy already exists", "status": 409}
    with pytest.raises(ProxyExists):
        client.create(upstream=echo, name="dup")


def test_unknown_proxy_and_toxic_are_404(server, client, echo):
    for method, path in [("GET", "/proxies/nope"), ("DELETE", "/proxies/nope"),
                         ("GET", "/proxies/nope/toxics"), ("POST", "/proxies/nope/toxics")]:
        r = api(server, method, path, json={"type": "latency"})
        assert r.status_code == 404 and r.json() == {"error": "proxy not found", "status": 404}
    proxy = client.create(upstream=echo, name="known")
    r = api(server, "GET", "/proxies/known/toxics/nope")
    assert r.status_code == 404 and r.json() == {"error": "toxic not found", "status": 404}
    with pytest.raises(NotFound):
        proxy.destroy_toxic("nope")
    assert client.get_proxy("nope") is None
    assert api(server, "GET", "/nowhere").status_code == 404


def test_bad_requests_are_400(server, client, echo):
    proxy = client.create(upstream=echo, name="bad")
    with pytest.raises(InvalidToxic):
        proxy.add_toxic(type="earthquake")
    with pytest.raises(InvalidToxic):
        proxy.add_toxic(type="latency", stream="sideways")
    r = api(server, "POST", "/proxies/bad/toxics", json={"type": "latency", "attributes": {"latency": "slow"}})
    assert r.status_code == 400 and r.json()["error"].startswith("bad request body")
    r = api(server, "POST", "/proxies", json={"name": "x"})
    assert r.status_code == 400 and r.json()["error"] == "missing required field: upstream"
    r = api(server, "POST", "/proxies", data=b"{not json")
    assert r.status_code == 400


def test_non_loopback_listen_is_refused(server, echo):
    for listen in ("0.0.0.0:0", ":0", "10.0.0.1:9999", "[::]:0"):
        r = api(server, "POST", "/proxies", json={"name": "open", "listen": listen, "upstream": echo})
        assert r.status_code == 400, listen
        assert "127.0.0.1 only" in r.json()["error"]
    assert api(server, "GET", "/proxies").json() == {}


def test_toxic_crud_and_update(server, client, echo):
    proxy = client.create(upstream=echo, name="crud")
    proxy.add_toxic(type="latency", attributes={"latency": 10})
    r = api(server, "POST", "/proxies/crud/toxics", json={"type": "latency"})
    assert r.status_code == 409 and r.json() == {"error": "toxic already exists", "status": 409}
    r = api(server, "PATCH", "/proxies/crud/toxics/latency_downstream",
            json={"attributes": {"jitter": 5}, "toxicity": 0.5})
    assert r.status_code == 200
    assert r.json() == {"attributes": {"latency": 10, "jitter": 5}, "name": "latency_downstream",
                        "type": "latency", "stream": "downstream", "toxicity": 0.5}
    toxic = proxy.get_toxic("latency_downstream")
    assert toxic.attributes == {"latency": 10, "jitter": 5} and toxic.toxicity == 0.5
    assert api(server, "DELETE", "/proxies/crud/toxics/latency_downstream").status_code == 204
    assert proxy.toxics() == {}


def test_browsers_are_refused(server):
    r = api(server, "GET", "/proxies", headers={"User-Agent": "Mozilla/5.0"})
    assert r.status_code == 403


# -- toxicity ----------------------------------------------------------------------------

def _applied(proxy, n: int = 16) -> list[bool]:
    """For n new connections: did the limit_data toxic (1 byte) apply?"""
    return [echo_once(proxy) == b"h" for _ in range(n)]


def test_toxicity_zero_never_and_one_always(client, echo):
    proxy = client.create(upstream=echo, name="tox")
    proxy.add_toxic(type="limit_data", name="cut", toxicity=0.0, attributes={"bytes": 1})
    assert _applied(proxy) == [False] * 16
    proxy.destroy_toxic("cut")
    proxy.add_toxic(type="limit_data", name="cut", toxicity=1.0, attributes={"bytes": 1})
    assert _applied(proxy) == [True] * 16


def _pattern(seed: int, upstream: str) -> list[bool]:
    with ServerThread(seed=seed) as s:
        proxy = toxiproxy_client(s.url, timeout=T).create(upstream=upstream, name="coin")
        proxy.add_toxic(type="limit_data", toxicity=0.5, attributes={"bytes": 1})
        return _applied(proxy, 24)


def test_same_seed_same_toxicity_decisions(echo):
    first = _pattern(7, echo)
    assert first == _pattern(7, echo)
    assert True in first and False in first  # a real coin, not a constant
    assert _pattern(8, echo) != first


# -- as a service process ----------------------------------------------------------------

def _ctx(tmp_path) -> RunContext:
    topology = Topology(name="t", stores=[{"name": "simple", "backend": "simple_crypto"}])
    return RunContext("proxy-test", tmp_path, topology, EnvSecrets())


def test_service_process_starts_and_stops_cleanly(tmp_path, echo):
    svc = ToxiproxyServer(_ctx(tmp_path))
    svc.check()
    svc.prepare()
    port = svc.ctx.ports["toxiproxy"]
    try:
        svc.start()
        svc.wait_healthy(timeout=30)
        assert svc.api_url == f"http://127.0.0.1:{port}"
        body = requests.get(svc.api_url + "/version", timeout=T).json()
        assert body["seed"] == svc.seed
        proxy = svc.client().create(upstream=echo, name="svc")
        assert echo_once(proxy) == b"hello, world"
        pids = [r.pid for r in svc.records()]
        proxy_port = addr(proxy)[1]
    finally:
        svc.stop()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert port_is_free(port)
    assert port_is_free(proxy_port)
    assert (tmp_path / "logs" / "toxiproxy.log").is_file()


def test_proxy_for_prefers_toxiproxy_url(tmp_path, monkeypatch, server, echo):
    ctx = _ctx(tmp_path)
    monkeypatch.delenv("TOXIPROXY_URL", raising=False)
    assert isinstance(proxy_for(ctx), ToxiproxyServer)
    monkeypatch.setenv("TOXIPROXY_URL", server.url)  # any Toxiproxy API: ours, in-process
    external = proxy_for(ctx)
    assert isinstance(external, ExternalToxiproxy) and external.api_url == server.url
    external.start()
    external.wait_healthy(timeout=10)
    proxy = external.client().create(upstream=echo, name="ext")
    assert echo_once(proxy) == b"hello, world"
    external.stop()  # nothing to stop: the server is someone else's
    assert api(server, "GET", "/proxies/ext").status_code == 200
