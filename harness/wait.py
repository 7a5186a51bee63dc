"""The one wait helper: poll until something holds, with a deadline, and when the deadline
passes say what was awaited, the last thing that went wrong and the end of the relevant log.

    wait_until(lambda: http_ok(url), timeout=60, what="keystone answers 200 on /v3",
               gave_up=lambda: "uwsgi exited" if proc.poll() is not None else None,
               log=lambda: log_tail(path))

`check` returns a truthy value when done (it is returned); anything else, or an exception
(kept as the last error), means "not yet". `gave_up` tells that waiting longer is
pointless (a process exited): the wait fails at once with that reason.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from harness.errors import HarnessError

T = TypeVar("T")


class WaitTimeout(HarnessError):
    """Something did not happen within its deadline (the message says what and why)."""


def wait_until(check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.2,
               gave_up: Callable[[], str | None] | None = None, log: Callable[[], str] | None = None,
               error: type[HarnessError] = WaitTimeout) -> T:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        if gave_up is not None:
            reason = gave_up()
            if reason:
                raise error(_message(f"{what}: {reason}", None, log))
        try:
            result = check()
            if result:
                return result
            last = "not yet" if result is None or result is False else repr(result)[:200]
        except HarnessError as exc:
            last = str(exc)[:300]
        except Exception as exc:  # noqa: BLE001 - every failure of a probe is "not yet"
            last = f"{type(exc).__name__}: {str(exc)[:300]}"
        if time.monotonic() >= deadline:
            raise error(_message(f"{what}: not within {timeout:.0f} s", last, log))
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def _message(head: str, last: str | None, log: Callable[[], str] | None) -> str:
    text = head + (f" (last: {last})" if last else "")
    if log is not None:
        try:
            tail = log().rstrip()
        except Exception:  # noqa: BLE001 - a missing log must not hide the real error
            tail = ""
        if tail:
            text += f"\n--- last log lines\n{tail}"
    return text
