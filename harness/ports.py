"""Free TCP ports on 127.0.0.1, picked at run time (never hard-coded)."""

from __future__ import annotations

import socket
import threading

_lock = threading.Lock()
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now. The kernel picks it; we remember it so two services
    of one process never get the same one before either has bound it."""
    with _lock:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("could not find a free port")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_port_open(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    from harness.wait import WaitTimeout, wait_until

    def connects() -> bool:
        with socket.create_connection((host, port), timeout=0.5):
            return True

    try:
        return wait_until(connects, timeout=timeout, interval=0.1, what=f"{host}:{port} accepts connections")
    except WaitTimeout:
        return False
