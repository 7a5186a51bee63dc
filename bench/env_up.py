#!/usr/bin/env python3
"""Cold `up` time and peak RSS per service, per topology, in one run.

    .venv/bin/python bench/env_up.py [--topologies simple-crypto pkcs11-softhsm] [--providers local docker] [--repeat 1]

"Cold" = a new environment from nothing (fresh data dir, keys, token, schema, users),
with the venv and the machine's MariaDB template data dir already in place. Peak RSS is
the sum over a service's process group (uWSGI master + workers, mariadbd ...), sampled
every 50 ms during up and during 50 store+get pairs afterwards. Target: up ≤ 15 s.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.environment import Environment  # noqa: E402
from harness.progress import Progress  # noqa: E402
from harness.providers import DEFAULT_PROVIDER, PROVIDERS  # noqa: E402


class RssSampler(threading.Thread):
    """Peak RSS (MiB) per service while the environment runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.env: Environment | None = None
        self.peak: dict[str, float] = {}
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            provider = self.env.provider if self.env else None
            if provider is not None:
                for rec in provider.records():
                    self.peak[rec.name] = max(self.peak.get(rec.name, 0.0), group_rss(rec.pid))
            self._halt.wait(0.05)

    def stop(self):
        self._halt.set()
        self.join()


def group_rss(pgid: int) -> float:
    total = 0
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid:
                total += p.memory_info().rss
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return total / 2**20


def bench_one(topology: str, provider: str = "local") -> dict:
    sampler = RssSampler()
    sampler.start()
    progress = Progress()
    # Environment.up builds the provider before starting anything; the sampler reads its
    # records as they appear.
    import harness.environment as envmod

    original = envmod.Environment.__init__

    def hooked(self, *a, **kw):
        original(self, *a, **kw)
        sampler.env = self

    envmod.Environment.__init__ = hooked
    start = time.monotonic()
    try:
        env = Environment.up(REPO / "environments" / f"{topology}.yaml", progress=progress, provider=provider)
    finally:
        envmod.Environment.__init__ = original
    up_s = time.monotonic() - start
    try:
        client = env.barbican()
        lat = []
        for _ in range(50):
            t = time.monotonic()
            ref = client.secrets.create(payload=secrets.token_bytes(32)).store()
            client.secrets.get(ref).payload
            lat.append((time.monotonic() - t) * 1000)
    finally:
        sampler.stop()
        env.down()
    return {"topology": topology, "provider": provider, "up_s": up_s, "steps": progress.timings, "rss": sampler.peak,
            "pair_p50_ms": statistics.median(lat)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topologies", nargs="+", default=["simple-crypto", "pkcs11-softhsm"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--providers", nargs="+", default=[DEFAULT_PROVIDER], choices=list(PROVIDERS),
                    help="docker: run `barbican-harness images build` first, or the first up includes the build")
    args = ap.parse_args()
    results = [bench_one(t, p) for _ in range(args.repeat) for t in args.topologies for p in args.providers]
    print(f"\n{'topology':<18} {'provider':<8} {'cold up (s)':>11} {'vs 15 s target':>15} {'store+get p50 (ms)':>19}")
    for r in results:
        print(f"{r['topology']:<18} {r['provider']:<8} {r['up_s']:>11.1f} {r['up_s'] / 15:>14.2f}x {r['pair_p50_ms']:>19.1f}")
    for r in results:
        print(f"\n{r['topology']} ({r['provider']}): where the time went")
        for name, secs in r["steps"]:
            print(f"  {name:<50} {secs:6.1f} s")
        print(f"{r['topology']}: peak RSS per service (MiB)")
        for name, mib in sorted(r["rss"].items()):
            print(f"  {name:<30} {mib:8.1f}")


if __name__ == "__main__":
    main()
