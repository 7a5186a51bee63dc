"""Local provider: every service is a process of this machine, bound to 127.0.0.1 on
free ports, with its files under the run directory.

Start order: harness/providers/sequence.py (shared with the Docker provider).
Every process is recorded in the state file the moment it starts, so `down` can stop it
even if this process dies half-way.
"""

from __future__ import annotations

import os
import signal
from typing import Callable

from harness.context import RunContext
from harness.errors import HarnessError
from harness.procs import ProcessRecord, all_stopped, stop_record
from harness.providers.sequence import StartSequence
from harness.services.barbican import BarbicanConfig, BarbicanNode, BarbicanWorker
from harness.services.base import Service
from harness.services.database import database_for
from harness.services.keystone import Keystone
from harness.wait import wait_until


class LocalProvider(StartSequence):
    name = "local"
    supports_partition = False  # no network of its own to cut: everything is on loopback

    def __init__(self, ctx: RunContext, on_change: Callable[[], None] = lambda: None):
        self.ctx = ctx
        self.on_change = on_change  # persists the state file
        topo = ctx.topology
        self.database = database_for(ctx)
        self.keystone = Keystone(ctx, self.database)
        self.softhsm = self.kmip = self.rabbit = self.shim = self.vault = None
        if "pkcs11" in topo.backends:
            from harness.services.softhsm import SoftHSM

            self.softhsm = SoftHSM(ctx)
            if topo.hsm.shim:
                from harness.services.hsm_shim import HsmShim

                self.shim = HsmShim(ctx, self.softhsm.library_or_default())
        if "kmip" in topo.backends:
            from harness.services.kmip import KmipServer

            self.kmip = KmipServer(ctx)
        if "vault" in topo.backends:
            from harness.services.vault import VaultServer

            self.vault = VaultServer(ctx)
        if topo.async_orders:
            from harness.services.rabbitmq import RabbitMQ

            self.rabbit = RabbitMQ(ctx)
        from harness.services.links import Links, link_upstreams
        from harness.services.proxy import proxy_for

        self.proxy = proxy_for(ctx)
        self.links = Links(ctx, self.proxy)
        for link, upstream in link_upstreams(topo).items():
            self.links.add(link, upstream)
        self.keystone.internal_url = self.keystone.url_on(self.links.port("keystone"))
        self.config = BarbicanConfig(ctx, self.database, self.keystone, softhsm=self.softhsm,
                                     kmip=self.kmip, rabbit=self.rabbit, shim=self.shim, links=self.links,
                                     vault=self.vault)
        self.nodes = [BarbicanNode(ctx, self.config, i + 1) for i in range(topo.barbican.nodes)]
        self.workers = [BarbicanWorker(ctx, self.config)] if topo.async_orders else []

    # -- what exists ----------------------------------------------------------------------
    def services(self) -> list[Service]:
        extra = [s for s in (self.softhsm, self.kmip, self.vault, self.rabbit) if s]
        return [self.proxy, self.database, *extra, self.keystone, *self.nodes, *self.workers]

    def adopt(self, records: list[dict], overrides: dict[str, dict]) -> None:
        """Rebuild the live picture from a state file (a later CLI call, `heal`, faults)."""
        services = self.services()
        for rec in records:
            record = ProcessRecord(**rec)
            # Longest name first: "barbican-worker-1" must not be taken by a "barbican" prefix.
            for service in sorted(services, key=lambda s: -len(s.name)):
                if service.owns(record.name):
                    service.adopt(record)
                    break
        for node in self.nodes:
            node.overrides = dict(overrides.get(node.name, {}))

    def readopt(self, records: list[dict], overrides: dict[str, dict]) -> None:
        """Replace what a service knows when the state file names other processes for it."""
        by_name = {r["name"]: r for r in records}
        for service in self.services():
            wanted = {n: r for n, r in by_name.items() if service.owns(n)}
            current = {p.record.name: p.record.pid for p in service.processes if p.record}
            if wanted and {n: r["pid"] for n, r in wanted.items()} != current:
                for proc in service.processes:
                    if proc.popen is not None:
                        proc.popen.poll()  # reap it if it is our dead child
                service.processes.clear()
                for rec in wanted.values():
                    service.adopt(ProcessRecord(**rec))
        for node in self.nodes:
            node.overrides = dict(overrides.get(node.name, {}))

    def stopped_services(self) -> list[str]:
        """Processes of the environment's own services (not API nodes or workers, which
        faults stop on purpose) that no longer run: the run is not up."""
        api = {id(s) for s in (*self.nodes, *self.workers)}
        return [p.name for s in self.services() if id(s) not in api for p in s.processes if not p.alive()]

    def node(self, name: str):
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def records(self) -> list[ProcessRecord]:
        return [r for s in self.services() for r in s.records()]

    def check(self) -> None:
        """Every dependency present, before anything starts."""
        for service in self.services():
            service.check()
        if self.shim:
            self.shim.check()

    # -- lifecycle (the order: StartSequence.up) -------------------------------------------
    def _start_keystone(self) -> None:
        # uWSGI loads the app (~3 s of imports) while bootstrap writes the admin user.
        self.keystone.db_sync()
        self.keystone.start()
        self.on_change()
        self.keystone.bootstrap()
        self.keystone.wait_healthy(90)

    def _barbican_manage(self, commands: list[list[str]]) -> None:
        for command in commands:
            self.nodes[0].manage(*command)

    def prepare_build(self, build, progress=None) -> None:
        """Nothing to make: a build's venv is all its processes need (harness.builds)."""

    def restart_node(self, name: str, overrides: dict | None = None, timeout: float = 90.0) -> None:
        """Restart one API node, with changed config (a fault) or back to the original ({})."""
        node = self.node(name)
        try:
            node.restart(overrides, timeout)
        finally:
            self.on_change()

    def signal_service(self, service, sig: int) -> None:
        """A signal to every process group of a service (uWSGI's workers included).

        A process that has exited is an error, never a silent no-op: a killed child this
        process has not reaped yet (a zombie) still has its group, so killpg succeeds and
        signals nothing, and a node_pause would report a freeze while the node serves."""
        for proc in service.processes:
            if not proc.record:
                continue
            if not proc.alive():
                raise HarnessError(f"{service.name} is not running: its process {proc.record.pid} has exited "
                                   "(it died, or was killed outside the harness; a restart brings it back)")
            try:
                os.killpg(proc.record.pid, sig)
            except ProcessLookupError:
                raise HarnessError(f"{service.name} is not running") from None
            if sig == signal.SIGSTOP:
                wait_until(lambda pgid=proc.record.pid: all_stopped(pgid), timeout=5, interval=0.05,
                           what=f"{service.name}: every process of group {proc.record.pid} stopped")

    def down(self, timeout: float = 10.0) -> None:
        # Reverse start order: API nodes first, database last.
        for service in reversed(self.services()):
            service.stop(timeout)


def stop_recorded(records: list[dict], timeout: float = 10.0) -> None:
    """Stop processes known only from a state file (the CLI that started them is gone)."""
    for rec in reversed(records):
        stop_record(ProcessRecord(**rec), timeout)
