"""What our Toxiproxy-compatible proxy adds to a request when no toxic is set.

Starts a small HTTP/1.1 keep-alive server (its own process) and `python -m harness.proxy`
(its own process, as the harness runs it), then sends the same sequential GETs over one
keep-alive connection directly and through the proxy, alternating in rounds so that
drift on the machine hits both alike. Prints p50/p95 latency and req/s side by side.

    .venv/bin/python bench/proxy_overhead.py [--requests 2000] [--rounds 4]

Target: the proxy adds under 1 ms at p50.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import statistics
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from harness.ports import free_port, wait_port_open

BODY = b'{"status": "ok", "pad": "' + b"x" * 200 + b'"}'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # Headers and body go out as two writes; with Nagle on, the body waits for the ACK
    # of the headers, which the client delays: ~40 ms per request on both paths.
    disable_nagle_algorithm = True

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


def _serve_upstream(port: int) -> None:
    ThreadingHTTPServer(("127.0.0.1", port), _Handler).serve_forever()


def _timed_requests(port: int, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read()
            out.append(time.perf_counter() - start)
            assert resp.status == 200 and body == BODY
    finally:
        conn.close()
    return out


def _stats(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100)
    return {"p50": q[49] * 1000, "p95": q[94] * 1000, "rps": len(samples) / sum(samples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per path (default 2000)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    args = parser.parse_args()

    up_port, api_port = free_port(), free_port()
    upstream = multiprocessing.get_context("fork").Process(target=_serve_upstream, args=(up_port,), daemon=True)
    upstream.start()
    proxy = subprocess.Popen([sys.executable, "-m", "harness.proxy", "--port", str(api_port),
                              "--log-level", "WARNING"], stdin=subprocess.DEVNULL)
    try:
        if not wait_port_open(up_port, 10) or not wait_port_open(api_port, 10):
            print("upstream or proxy did not start", file=sys.stderr)
            return 1
        r = requests.post(f"http://127.0.0.1:{api_port}/proxies", timeout=10,
                          json={"name": "bench", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{up_port}"})
        r.raise_for_status()
        proxy_port = int(r.json()["listen"].rsplit(":", 1)[1])

        for port in (up_port, proxy_port):  # warm-up: connections, caches, allocator
            _timed_requests(port, 200)
        direct: list[float] = []
        proxied: list[float] = []
        per_round = max(1, args.requests // args.rounds)
        for _ in range(args.rounds):
            direct += _timed_requests(up_port, per_round)
            proxied += _timed_requests(proxy_port, per_round)

        d, p = _stats(direct), _stats(proxied)
        print(f"{len(direct)} sequential keep-alive GETs per path, {len(BODY)}-byte body, no toxic")
        print(f"{'':14}{'direct':>10}{'proxy':>10}{'ratio':>8}")
        print(f"{'p50 (ms)':14}{d['p50']:10.3f}{p['p50']:10.3f}{p['p50'] / d['p50']:8.2f}")
        print(f"{'p95 (ms)':14}{d['p95']:10.3f}{p['p95']:10.3f}{p['p95'] / d['p95']:8.2f}")
        print(f"{'req/s':14}{d['rps']:10.0f}{p['rps']:10.0f}{p['rps'] / d['rps']:8.2f}")
        added = p["p50"] - d["p50"]
        print(f"added p50: {added:.3f} ms ({'within' if added < 1.0 else 'OVER'} the 1 ms target)")
        return 0
    finally:
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
        upstream.terminate()
        upstream.join(5)


if __name__ == "__main__":
    sys.exit(main())
