"""The PyKMIP server in a container, and its address inside the network."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from harness.ports import free_port
from harness.providers.docker.network import KMIP_PORT
from harness.providers.docker.service import ContainerService

if TYPE_CHECKING:
    from harness.providers.docker.proxy import DockerLinks


class DockerKmip(ContainerService):
    """PyKMIP with the local provider's TLS material (harness.services.kmip), listening on
    the network; the host probes it through the published port."""

    name = "kmip"
    role = "kmip"
    stop_signal = "SIGINT"  # PyKMIP ignores SIGTERM until its accept() times out
    port_key, inner_port = "kmip", KMIP_PORT

    def __init__(self, rt):
        from harness.services.kmip import KmipServer

        super().__init__(rt)
        self.local = KmipServer(self.ctx)

    def prepare(self) -> None:
        self.ctx.ports.setdefault("kmip", free_port())
        self.local.write_files("0.0.0.0", KMIP_PORT)

    def argv(self) -> list[str]:
        return ["pykmip-server", "-f", str(self.local.server_conf),
                "-l", str(self.ctx.logs_dir / "kmip-server.log")]

    def _listening(self) -> bool | None:
        """Whether the server listens, from the container's own /proc/net/tcp (its network
        namespace), so that the probe does not hit a server that is not up yet (PyKMIP's
        client logs every refused or reset connection as an error). None: cannot tell."""
        rec = self.record()
        if rec is None:
            return None
        want = f":{KMIP_PORT:04X}"
        try:
            for table in ("tcp", "tcp6"):
                with open(f"/proc/{rec.pid}/net/{table}") as f:
                    for line in f.readlines()[1:]:
                        fields = line.split()
                        if fields[1].endswith(want) and fields[3] == "0A":  # LISTEN
                            return True
        except OSError:
            return None
        return False

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self._exited():
                raise self.fail("pykmip-server exited")
            if self._listening() is False:
                last = "not listening yet"
                time.sleep(0.2)
                continue
            try:
                self.local.probe(timeout=min(5.0, max(1.0, deadline - time.monotonic())))
                return
            except Exception as exc:  # noqa: BLE001 - not yet
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.3)
        raise self.fail(f"KMIP did not answer within {timeout:.0f} s (last: {last})")

    def barbican_options(self) -> dict[str, str]:
        """The host's view (127.0.0.1 and the published port): what `probe` uses."""
        return self.local.barbican_options()


class KmipInside:
    def __init__(self, kmip: DockerKmip, links: DockerLinks | None):
        self.kmip, self.links = kmip, links

    def barbican_options(self) -> dict[str, str]:
        options = self.kmip.local.barbican_options()
        via = self.links and "kmip" in self.links.upstreams
        options["host"] = "proxy" if via else "kmip"
        options["port"] = str(KMIP_PORT)  # BarbicanConfig replaces it with the link's port
        return options
