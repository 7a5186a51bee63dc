"""PKCS#11 call counts during a load run, from the fault shim's statistics.

The shim counts calls, errors, injected faults and time per function in every process
that loads it; a sampler thread reads the totals once a second, so the report can show
HSM operations per second (and their mean time) next to the fault windows."""

from __future__ import annotations

import threading
import time


def _flat(stats: dict[str, dict]) -> dict[str, list[int]]:
    return {fn: [e["calls"], e["errors"], e["injected"], e["total_ns"]] for fn, e in stats.items()}


class HsmSampler(threading.Thread):
    def __init__(self, control, interval: float = 1.0):
        super().__init__(daemon=True, name="hsm-sampler")
        self.control = control
        self.interval = interval
        self.samples: list[tuple[float, dict[str, list[int]]]] = []
        self._halt = threading.Event()
        self.error: str | None = None

    def _sample(self) -> None:
        try:
            self.samples.append((time.time(), _flat(self.control.stats())))
        except Exception as exc:  # noqa: BLE001 - statistics are best effort
            self.error = f"{type(exc).__name__}: {exc}"

    def run(self) -> None:
        self._sample()
        while not self._halt.wait(self.interval):
            self._sample()

    def stop(self) -> dict:
        self._halt.set()
        self.join(timeout=10)
        # The shim writes its files at most every 0.2 s: one last, settled sample.
        time.sleep(0.3)
        self._sample()
        return self.result()

    def result(self) -> dict:
        if not self.samples:
            return {"functions": {}, "samples": [], "error": self.error}
        _, first = self.samples[0]
        _, last = self.samples[-1]
        functions = {}
        for fn, (calls, errors, injected, total_ns) in last.items():
            base = first.get(fn, [0, 0, 0, 0])
            if calls < base[0]:  # counters restarted (baseline reset by someone else)
                base = [0, 0, 0, 0]
            d = [calls - base[0], errors - base[1], injected - base[2], total_ns - base[3]]
            if d[0] > 0:
                functions[fn] = {"calls": d[0], "errors": d[1], "injected": d[2],
                                 "mean_ms": round(d[3] / d[0] / 1e6, 3)}
        samples = [{"t": round(t, 3), "calls": {fn: v[0] for fn, v in s.items()},
                    "total_ns": {fn: v[3] for fn, v in s.items()}} for t, s in self.samples]
        return {"functions": dict(sorted(functions.items())), "samples": samples, "error": self.error}
