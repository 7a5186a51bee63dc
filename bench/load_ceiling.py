#!/usr/bin/env python3
"""Is Locust the bottleneck? req/s of the store+get mix driven by Locust vs a plain
concurrent client loop against the same Barbican: the raw ceiling on this machine.

    .venv/bin/python bench/load_ceiling.py [--run RUN_ID | --cloud NAME --targets FILE] [--users 8]
        [--duration 10] [--rounds 2] [--warmup 3] [--json]

One simple-crypto environment (brought up and down here unless --run names one that is
up), or an existing cloud (--cloud with its targets file; what both sides write there is
named under one prefix and deleted at the end, as every command does on a cloud). Both sides do exactly the same work with the same concurrency: POST a 32-byte
secret with a unique ledger name (recorded in the integrity ledger before and after),
then GET its payload through the other API node and compare the sha256; requests
alternate over the nodes; no think time; one TCP connection per request (the harness's
uWSGI keeps a thread on an idle keep-alive connection, see load/locustfile.py).

  locust  harness.load_driver.run_load with only the StoreGet user class (Locust subprocess,
          FastHttpUser, gevent);
  plain   N threads in this process (http.client, the standard library's client),
          sharing one Keystone token as the Locust process shares one per role.

Requests counted are those that *started* in the measured window (the first `--warmup`
seconds of each side are excluded). Prints both rates and their ratio (goal ≥ 0.9).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from harness.environment import Environment  # noqa: E402
from harness.ledger import Ledger  # noqa: E402
from harness.load_driver.driver import run_load  # noqa: E402
from harness.load_driver.series import Series  # noqa: E402
from harness.targets import open_target  # noqa: E402
from harness.writes import Writes, clean_up_all, new_prefix  # noqa: E402


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


class ChildCpu(threading.Thread):
    """CPU seconds the Locust process spends in the measured window (its start-up excluded)."""

    def __init__(self, started_file: Path, warmup: float, duration: float):
        super().__init__(daemon=True)
        self.started_file, self.warmup, self.duration = started_file, warmup, duration
        self.cpu: float | None = None

    def run(self) -> None:
        deadline = time.time() + 120
        while not self.started_file.exists() and time.time() < deadline:
            time.sleep(0.05)
        try:
            started = float(self.started_file.read_text())
            child = next(p for p in psutil.Process().children(recursive=True) if "locust" in " ".join(p.cmdline()))
            time.sleep(max(0.0, started + self.warmup - time.time()))
            a = child.cpu_times()
            time.sleep(max(0.0, started + self.warmup + self.duration - time.time()))
            b = child.cpu_times()
            self.cpu = (b.user + b.system) - (a.user + a.system)
        except (OSError, ValueError, StopIteration, psutil.Error):
            self.cpu = None


def locust_side(env, users: int, duration: float, warmup: float) -> dict:
    out_dir = Path(env.run_dir) / "load" / f"ceiling-locust-{time.strftime('%H%M%S')}-{os.getpid()}"
    meter = ChildCpu(out_dir / "started", warmup, duration)
    meter.start()
    result = run_load(env, users=users, spawn_rate=max(users, 1) * 10, duration=duration + warmup, seed=1,
                      weights={"octavia": 0, "luks": 0, "crud": 0, "orders": 0, "store_get": 1}, wait=(0, 0),
                      fixtures=(0, 0), check_ledger=False, out_dir=out_dir)
    meter.join(timeout=10)
    series = Series.load(result.out_dir / "series")
    start = result.started_wall + warmup
    secs = [s for s in series.seconds if start <= s < start + duration]
    n = f = 0
    for name in ("secret.create", "secret.get_payload"):
        cell = series.merged(name, secs)
        n, f = n + cell.n, f + cell.f
    return {"requests": n, "failures": f, "seconds": len(secs), "rps": n / max(len(secs), 1),
            "cpu_ms_per_request": 1000 * meter.cpu / max(n, 1) if meter.cpu is not None else float("nan"),
            "out_dir": str(result.out_dir), "errors": result.errors}


def _call(url: str, method: str, headers: dict, body: bytes | None = None) -> tuple[int, bytes]:
    """One request on its own connection, closed as soon as the answer is read."""
    u = urlsplit(url)
    kind = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = kind(u.hostname, u.port, timeout=15)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def plain_side(env, users: int, duration: float, warmup: float) -> dict:
    prefix = new_prefix() if env.foreign else None
    if prefix:
        Writes(env.run_dir).open(prefix, [env.writer_role], "bench load_ceiling (plain side)")
    ledger = Ledger(Path(env.run_dir) / "load" / f"ceiling-plain-{int(time.time())}" / "ledger", prefix=prefix)
    role = env.writer_role
    nodes = [n.url for n in env.nodes]
    counts: dict[int, list[int]] = {}
    lock = threading.Lock()
    t0 = time.time()
    start, stop = t0 + warmup, t0 + warmup + duration
    token = env.session(role).get_token()

    def count(started: float, ok: bool) -> None:
        if start <= started < stop:
            with lock:
                c = counts.setdefault(int(started), [0, 0])
                c[0] += 1
                c[1] += 0 if ok else 1

    def worker(i: int) -> None:
        auth = {"X-Auth-Token": token, "Connection": "close"}
        k = i
        while time.time() < stop:
            node, other = nodes[k % len(nodes)], nodes[(k + 1) % len(nodes)]
            k += 1
            payload = os.urandom(32)
            name = ledger.new_name("ceiling")
            ledger.created(name, payload, role, node, "unknown", error="in flight")
            body = json.dumps({"name": name, "payload": base64.b64encode(payload).decode(),
                               "payload_content_type": "application/octet-stream",
                               "payload_content_encoding": "base64"}).encode()
            a = time.time()
            try:
                status, data = _call(node + "/v1/secrets", "POST", {**auth, "Content-Type": "application/json"}, body)
                ref = json.loads(data)["secret_ref"] if status == 201 else None
                outcome = "ok" if ref else "failed"
            except OSError:
                ref, outcome = None, "unknown"
            count(a, ref is not None)
            ledger.created(name, payload, role, node, outcome, ref=ref)
            if not ref:
                continue
            b = time.time()
            try:
                status, data = _call(other + "/v1/" + ref.partition("/v1/")[2] + "/payload", "GET",
                                     {**auth, "Accept": "application/octet-stream"})
                ok = status == 200 and hashlib.sha256(data).digest() == hashlib.sha256(payload).digest()
            except OSError:
                ok = False
            count(b, ok)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(users)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start - time.time()))
    cpu0 = _cpu(resource.RUSAGE_SELF)
    time.sleep(max(0.0, stop - time.time()))
    cpu = _cpu(resource.RUSAGE_SELF) - cpu0
    for t in threads:
        t.join(timeout=60)
    n = sum(c[0] for c in counts.values())
    f = sum(c[1] for c in counts.values())
    return {"requests": n, "failures": f, "seconds": duration, "rps": n / duration,
            "cpu_ms_per_request": 1000 * cpu / max(n, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="use this environment (up) instead of bringing up simple-crypto")
    ap.add_argument("--cloud", help="an existing cloud (clouds.yaml name) instead of an environment")
    ap.add_argument("--targets", help="with --cloud: the targets file (a cloud per role, node URLs)")
    ap.add_argument("--users", type=int, default=8, help="concurrent users / threads (default 8)")
    ap.add_argument("--duration", type=float, default=10, help="measured seconds per side and round (default 10)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating plain/locust rounds (default 2)")
    ap.add_argument("--warmup", type=float, default=3, help="seconds excluded at the start of each side")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    if args.cloud:
        env = open_target(cloud=args.cloud, targets=args.targets)
    else:
        env = Environment.attach(args.run) if args.run else Environment.up(REPO / "environments" / "simple-crypto.yaml")
    rounds: list[dict] = []
    try:
        # Alternating rounds: the machine's other load drifts, and both sides see the same drift.
        for _ in range(args.rounds):
            plain = plain_side(env, args.users, args.duration, args.warmup)
            loc = locust_side(env, args.users, args.duration, args.warmup)
            rounds.append({"plain": plain, "locust": loc})
    finally:
        if env.foreign:
            clean_up_all(env)  # the plain side's secrets (the Locust side cleans up after itself)
        elif not args.run:
            env.down()

    def total(side: str) -> dict:
        n = sum(r[side]["requests"] for r in rounds)
        f = sum(r[side]["failures"] for r in rounds)
        secs = sum(r[side]["seconds"] for r in rounds)
        cpu = sum(r[side]["cpu_ms_per_request"] for r in rounds) / len(rounds)
        return {"requests": n, "failures": f, "seconds": secs, "rps": n / secs if secs else 0.0,
                "cpu_ms_per_request": round(cpu, 3)}

    plain, loc = total("plain"), total("locust")
    ratio = loc["rps"] / plain["rps"] if plain["rps"] else 0.0
    figures = {"environment": env.name, "users": args.users, "duration_s": args.duration,
               "rounds": [{k: round(v["rps"], 1) for k, v in r.items()} for r in rounds],
               "locust": loc, "plain": plain, "ratio": round(ratio, 3), "goal": 0.9}
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        print(f"store+get mix, {args.users} concurrent, {args.rounds} x {args.duration:g} s measured per side, "
              f"on {figures['environment']}")
        for i, r in enumerate(figures["rounds"], 1):
            print(f"  round {i}: plain {r['plain']:.1f} req/s, locust {r['locust']:.1f} req/s")
        for label, side in (("plain threads", plain), ("locust       ", loc)):
            print(f"  {label} : {side['rps']:7.1f} req/s  ({side['requests']} requests, {side['failures']} failed; "
                  f"client CPU {side['cpu_ms_per_request']:.2f} ms/request)")
        print(f"  ratio locust/plain = {ratio:.2f}  (goal >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
