"""Load with faults: Locust (as subprocesses) driven alongside the fault timeline.

    from harness.load_driver import run_load, Threshold
    result = run_load(env, users=20, spawn_rate=10, duration=60, timeline_events=[...])

Locust itself is never imported here (gevent monkey-patching breaks pytest): it runs
the locustfile in load/ as its own processes. Imports are lazy so that the locustfile
can use harness.load_driver.series without pulling in the driver.
"""

from __future__ import annotations

__all__ = ["LoadResult", "Threshold", "run_load"]


def __getattr__(name: str):
    if name in ("run_load", "LoadResult"):
        from harness.load_driver import driver

        return getattr(driver, name)
    if name == "Threshold":
        from harness.load_driver.thresholds import Threshold

        return Threshold
    raise AttributeError(name)
