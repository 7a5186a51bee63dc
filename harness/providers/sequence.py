"""The order an environment comes up in, shared by every provider.

Independent steps run in parallel threads, since most of the time is spent waiting on
one-shot Python commands and on services warming up:
  1. fault proxy | database | SoftHSM token (+ shim control) | KMIP server | OpenBao
     (init, unseal, KV mount, policy, AppRole) | RabbitMQ
  2. the proxy's links (they need every upstream port), then every config is rendered
  3. Keystone (db_sync, uWSGI, bootstrap, then users, roles and catalog)
     | Barbican schema (+ MKEK and HMAC key), then the API nodes
  4. barbican-worker (needs the queue and the schema)

A provider supplies the services (processes or containers) and the few steps that differ
in how they are done, not in when: `_before_services`, `_start_keystone` and
`_barbican_manage`. Services are recorded (`on_change`) the moment they start, so `down`
finds them even if the harness dies half-way through.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from harness.progress import Progress


def parallel(*jobs: Callable[[], None] | None) -> None:
    """Run jobs in threads; re-raise the first failure after all have finished."""
    jobs = [j for j in jobs if j]
    if len(jobs) == 1:
        jobs[0]()
        return
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(j) for j in jobs]
        errors = [f.exception() for f in futures if f.exception()]
    if errors:
        raise errors[0]


class StartSequence:
    """Mixin of a provider: `up` in the shared order. The provider has the attributes
    database, softhsm, shim, kmip, vault, rabbit, proxy, links, keystone, nodes, workers (the
    optional ones None or empty) and `on_change`."""

    # How a step's progress line names what starts ("" for processes, " container").
    unit: str = ""

    def _start(self, service, timeout: float = 90.0) -> None:
        service.start()
        self.on_change()
        service.wait_healthy(timeout)

    # -- what providers do differently -------------------------------------------------------
    def _before_services(self, progress: Progress) -> None:
        """Anything the services need before the first starts (images, a network)."""

    def _start_keystone(self) -> None:
        raise NotImplementedError

    def _barbican_manage(self, commands: list[list[str]]) -> None:
        """Run `barbican-manage` commands, in order, with the first node's config."""
        raise NotImplementedError

    def restart_worker(self, name: str, timeout: float = 90.0) -> None:
        """Start a worker again (after a kill): it is ready once it consumes its queue."""
        worker = next((w for w in self.workers if w.name == name), None)
        if worker is None:
            raise KeyError(name)
        try:
            worker.stop()
            worker.processes.clear()  # the local provider's records of the dead process
            worker.start()
            worker.wait_healthy(timeout)
        finally:
            self.on_change()

    # -- the order ----------------------------------------------------------------------------
    def up(self, progress: Progress, seed_identity: Callable[[], None]) -> None:
        unit = self.unit
        self._before_services(progress)

        def database():
            with progress.step(f"database{unit} ({self.ctx.topology.database})"):
                self.database.prepare()
                self._start(self.database)

        def softhsm():
            with progress.step("SoftHSM token"):
                self.softhsm.prepare()
                if self.shim:
                    self.shim.prepare()

        def kmip():
            with progress.step(f"KMIP server{unit}"):
                self.kmip.prepare()
                self._start(self.kmip)

        def vault():
            with progress.step(f"OpenBao{unit} (init, unseal, KV mount, policy, AppRole)"):
                self.vault.prepare()
                self._start(self.vault)
                self.vault.bootstrap()

        def rabbit():
            with progress.step(f"RabbitMQ{unit}"):
                self.rabbit.prepare()
                self._start(self.rabbit, 120)

        def proxy():
            with progress.step(f"fault proxy{unit} (Toxiproxy API)"):
                self.proxy.prepare()
                self._start(self.proxy)

        parallel(proxy, database, self.softhsm and softhsm, self.kmip and kmip, self.vault and vault,
                 self.rabbit and rabbit)
        with progress.step("network links through the proxy"):
            self.links.populate()

        # Configs need every port and link, so all are rendered before the second phase.
        self.keystone.render()
        for node in self.nodes:
            node.render()
        for worker in self.workers:
            worker.render()

        def keystone():
            with progress.step(f"Keystone{unit} (db_sync, bootstrap, uWSGI)"):
                self._start_keystone()
            with progress.step("Keystone users, roles and catalog"):
                seed_identity()

        def barbican():
            # Barbican nodes need Keystone only when a request comes, so they start now.
            commands = [["db", "upgrade"]]
            if self.softhsm:
                commands += [["hsm", "gen_mkek"], ["hsm", "gen_hmac"]]
            if self.ctx.topology.multiple_stores:
                # Each node syncs the secret_stores table with its config as it starts;
                # nodes starting together on an empty table insert the same rows (a
                # duplicate-key failure, one bring-up in two). Synced once here, before
                # any node starts, the nodes find every row there.
                commands.append(["db", "sync_secret_stores"])
            with progress.step("Barbican schema" + (", MKEK and HMAC key" if self.softhsm else "")):
                self._barbican_manage(commands)
            with progress.step(f"Barbican API node{unit}s ({len(self.nodes)}, uWSGI)"):
                for node in self.nodes:
                    node.start()
                self.on_change()
                for node in self.nodes:
                    node.wait_healthy(90)

        parallel(keystone, barbican)
        for worker in self.workers:
            with progress.step(f"{worker.name}{unit}"):
                self._start(worker)
        self.on_change()
