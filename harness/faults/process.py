"""Process incidents: a node killed or frozen, the worker gone."""

from __future__ import annotations

import os
import signal
from typing import Any

from harness.faults.base import Fault, FaultError, Params, node_name


class NodeParams(Params):
    node: str = "1"


def _signal_group(service, sig: int, provider=None) -> None:
    # Providers that are not made of local process groups say what a signal means for
    # them (Docker: SIGKILL = container kill, SIGSTOP/SIGCONT = pause/unpause).
    send = getattr(provider, "signal_service", None)
    if send is not None:
        send(service, sig)
        return
    for proc in service.processes:
        if proc.record:
            try:
                os.killpg(proc.record.pid, sig)
            except ProcessLookupError as exc:
                raise FaultError(f"{service.name} is not running") from exc


class NodeKill(Fault):
    """API node killed (SIGKILL: OOM killer, host loss): its clients get connection
    refused; the other nodes keep serving. Heal restarts it."""

    name = "node_kill"
    Params = NodeParams

    def prepare(self, env) -> dict[str, Any]:
        return {"node": node_name(env, self.params.node)}

    def inject(self, env, undo: dict[str, Any]) -> None:
        _signal_group(env.provider.node(undo["node"]), signal.SIGKILL, env.provider)

    def heal(self, env, undo: dict[str, Any]) -> None:
        env.provider.restart_node(undo["node"], None)


class NodePause(Fault):
    """API node frozen (SIGSTOP: a hung VM, a stop-the-world pause): connections are
    accepted by the kernel but never answered, so only client timeouts save the caller."""

    name = "node_pause"
    Params = NodeParams

    def prepare(self, env) -> dict[str, Any]:
        return {"node": node_name(env, self.params.node)}

    def inject(self, env, undo: dict[str, Any]) -> None:
        _signal_group(env.provider.node(undo["node"]), signal.SIGSTOP, env.provider)

    def heal(self, env, undo: dict[str, Any]) -> None:
        _signal_group(env.provider.node(undo["node"]), signal.SIGCONT, env.provider)


class WorkerDown(Fault):
    """barbican-worker down (async orders): POST /orders still answers 202 but orders
    stay PENDING with no secret_ref until a worker consumes the queue again."""

    name = "worker_down"
    requires = "async_orders"

    def inject(self, env, undo: dict[str, Any]) -> None:
        for worker in env.provider.workers:
            _signal_group(worker, signal.SIGKILL, env.provider)

    def heal(self, env, undo: dict[str, Any]) -> None:
        for worker in env.provider.workers:
            worker.stop()
            worker.processes.clear()
            worker.start()
            worker.wait_healthy(90)
        env.provider.on_change()
