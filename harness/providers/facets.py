"""The facets (harness.target) of an environment the harness brought up, for either
provider: each one a thin view over the provider's public operations, so faults and
triage never reach into a provider's services.

Which facets an environment has depends on its topology (a database of its own, a
PKCS#11 token, a shim) and provider (only containers have a network to cut).
"""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.providers import provider_class
from harness.services.links import link_upstreams
from harness.target import Capability, Traits


class ProviderNodeControl:
    def __init__(self, provider):
        self.provider = provider

    def _service(self, name: str):
        for service in [*self.provider.nodes, *self.provider.workers]:
            if service.name == name:
                return service
        raise HarnessError(f"no node or worker '{name}'; have: "
                           f"{[s.name for s in [*self.provider.nodes, *self.provider.workers]]}")

    def kill(self, node: str) -> None:
        self.provider.signal_service(self._service(node), signal.SIGKILL)

    def pause(self, node: str) -> None:
        self.provider.signal_service(self._service(node), signal.SIGSTOP)

    def resume(self, node: str) -> None:
        self.provider.signal_service(self._service(node), signal.SIGCONT)

    def stop(self, node: str) -> None:
        self._service(node).stop()
        self.provider.on_change()

    def restart(self, node: str) -> None:
        self.provider.restart_node(node, None)

    def workers(self) -> list[str]:
        return [w.name for w in self.provider.workers]

    def kill_worker(self, worker: str) -> None:
        self.kill(worker)

    def restart_worker(self, worker: str) -> None:
        self.provider.restart_worker(worker)


class ProviderConfigWrite:
    def __init__(self, provider):
        self.provider = provider

    def restart_with(self, node: str, overrides: dict[str, Any]) -> None:
        self.provider.restart_node(node, overrides)

    def overrides(self, node: str) -> dict[str, Any]:
        return dict(self.provider.node(node).overrides)

    def keep(self, node: str) -> dict[str, Any]:
        return {}  # the original config is re-rendered from the environment's state


class OfflineNodeControl(ProviderNodeControl):
    """Node control on a run that is down: nothing runs, and nothing may be started (a
    healed fault must not leave a process that no environment owns)."""

    def kill(self, node: str) -> None:
        pass

    pause = resume = stop = restart = kill_worker = restart_worker = kill


class OfflineConfigWrite(ProviderConfigWrite):
    """Config writes on a run that is down: the node's files are rendered again (with the
    original config, for a heal) and recorded; the node is not started."""

    def restart_with(self, node: str, overrides: dict[str, Any]) -> None:
        service = self.provider.node(node)
        if overrides is not None:
            service.overrides = dict(overrides)
        service.render()
        self.provider.on_change()


class ProviderManage:
    def __init__(self, provider):
        self.provider = provider

    def run(self, node: str, *args: str, timeout: float = 120) -> str:
        return self.provider.node(node).manage(*args, timeout=timeout)


# Deletes one secret key by label with python-pkcs11, in a child process: the module is
# loaded there, not in the harness, and the PIN arrives through the environment.
_DELETE_KEY = """
import os, sys, pkcs11
from pkcs11 import ObjectClass
lib = pkcs11.lib(sys.argv[1])
token = lib.get_token(token_label=sys.argv[2])
with token.open(user_pin=os.environ["HARNESS_HSM_PIN"], rw=True) as s:
    objs = list(s.get_objects({pkcs11.Attribute.CLASS: ObjectClass.SECRET_KEY,
                               pkcs11.Attribute.LABEL: sys.argv[3]}))
    if not objs:
        sys.exit("no key labelled " + sys.argv[3])
    for o in objs:
        o.destroy()
"""


# The HSM as Barbican's plugin needs it, asked directly (not through the fault shim): the
# token opens, the user PIN logs in, the MKEK and HMAC key are there. Prints one line.
_PROBE_TOKEN = """
import os, sys, pkcs11
from pkcs11 import ObjectClass
lib = pkcs11.lib(sys.argv[1])
token = lib.get_token(token_label=sys.argv[2])
with token.open(user_pin=os.environ["HARNESS_HSM_PIN"]) as s:
    missing = [label for label in sys.argv[3:]
               if not list(s.get_objects({pkcs11.Attribute.CLASS: ObjectClass.SECRET_KEY,
                                          pkcs11.Attribute.LABEL: label}))]
print("missing keys: " + ", ".join(missing) if missing else "token opens, keys present")
"""


class SoftHsmToken:
    """The environment's SoftHSM token: its files (snapshot and restore) and its keys."""

    def __init__(self, ctx, softhsm):
        self.ctx = ctx
        self.softhsm = softhsm
        hsm = ctx.topology.hsm
        self.token_label, self.mkek_label, self.hmac_label = hsm.token_label, hsm.mkek_label, hsm.hmac_label

    def snapshot(self, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.softhsm.tokens_dir, dest)

    def restore(self, src: Path) -> None:
        # SoftHSM must not have the token open while its files are replaced: the caller
        # stops every node first.
        tokens = self.softhsm.tokens_dir
        shutil.rmtree(tokens)
        shutil.copytree(src, tokens)

    @property
    def library(self) -> str:
        # An attached environment's SoftHSM has not run check(), which sets .library.
        return getattr(self.softhsm, "library", None) or self.softhsm.library_or_default()

    def probe(self, timeout: float = 3.0) -> str:
        """Raises when the token cannot be opened or logged into, or a key is missing
        (HsmKeyMissing); returns what it saw."""
        from harness.procs import run

        done = run([sys.executable, "-c", _PROBE_TOKEN, self.library, self.token_label,
                    self.mkek_label, self.hmac_label],
                   env=self.ctx.environ(HARNESS_HSM_PIN=self.ctx.secrets.hsm_pin, **self.softhsm.env()),
                   timeout=timeout, what="HSM probe", check=False)
        if done.returncode != 0:
            raise HarnessError("HSM probe: " + (done.stderr.strip().splitlines() or ["failed"])[-1][:200])
        line = done.stdout.strip()
        if line.startswith("missing keys"):
            raise HsmKeyMissing(line)
        return line

    def delete_key(self, label: str) -> None:
        from harness.procs import run_command

        run_command([sys.executable, "-c", _DELETE_KEY, self.library, self.token_label, label],
                    env=self.ctx.environ(HARNESS_HSM_PIN=self.ctx.secrets.hsm_pin, **self.softhsm.env()),
                    log_path=self.ctx.logs_dir / "hsm-token.log", timeout=60,
                    what=f"delete key '{label}' from the token")


class HsmKeyMissing(HarnessError):
    """The HSM answers, but a key Barbican's plugin needs is not on the token."""


class ProviderLinks:
    def __init__(self, links):
        self.links = links

    def names(self) -> list[str]:
        return sorted(self.links.upstreams)

    def get(self, name: str):
        return self.links.get(name)


class RunDirLogs:
    """Every service writes into <run_dir>/logs (containers too: the run directory is
    bind-mounted at the same path); Barbican's own log is <node>-app.log."""

    def __init__(self, ctx):
        self.ctx = ctx

    def dir(self) -> Path:
        return self.ctx.logs_dir

    def app_logs(self) -> dict[str, Path]:
        return {p.name.removesuffix("-app.log"): p for p in sorted(self.ctx.logs_dir.glob("*-app.log"))}


class ProviderContainerNetwork:
    def __init__(self, provider):
        self.provider = provider

    def disconnect(self, node: str) -> None:
        self.provider.partition(node)

    def reconnect(self, node: str) -> None:
        self.provider.heal_partition(node)


def environment_capabilities(topology, provider_name: str) -> frozenset[Capability]:
    """What an environment of this topology on this provider can do: the one place that
    decides it, for live environments and for checking scenario files before they run."""
    caps = {Capability.API, Capability.KEYSTONE_ADMIN, Capability.NODE_CONTROL, Capability.CONFIG_WRITE,
            Capability.MANAGE, Capability.NETWORK_LINKS, Capability.SERVICE_LOGS}
    if topology.database == "mariadb":  # sqlite has no server to connect to
        caps.add(Capability.DATABASE)
    if "pkcs11" in topology.backends:
        if topology.hsm.shim:
            caps.add(Capability.HSM_SHIM)
        if topology.hsm.pin_env is None:
            # An existing (vendor) token is the operator's: the harness does not touch its objects.
            caps.add(Capability.HSM_TOKEN)
    if "vault" in topology.backends:
        caps.add(Capability.VAULT)
    if provider_class(provider_name).supports_partition:
        caps.add(Capability.CONTAINER_NETWORK)
    return frozenset(caps)


def environment_traits(topology, provider_name: str, name: str | None = None) -> Traits:
    """An environment's traits before it exists (scenario validation)."""
    return Traits(name or f"{topology.name} ({provider_name} provider)",
                  environment_capabilities(topology, provider_name), tuple(topology.backends),
                  topology.async_orders, tuple(f"barbican-{i + 1}" for i in range(topology.barbican.nodes)),
                  tuple(link_upstreams(topology)))


def provider_facets(provider, offline: bool = False) -> dict[Capability, object]:
    """The facets of a harness environment, from its provider and topology; `offline`: of
    a run that is down (Environment.offline)."""
    ctx = provider.ctx
    builders = {
        Capability.KEYSTONE_ADMIN: lambda: None,  # Environment.fresh_project: the seeded cloud admin
        Capability.NODE_CONTROL: lambda: (OfflineNodeControl if offline else ProviderNodeControl)(provider),
        Capability.CONFIG_WRITE: lambda: (OfflineConfigWrite if offline else ProviderConfigWrite)(provider),
        Capability.MANAGE: lambda: ProviderManage(provider),
        Capability.NETWORK_LINKS: lambda: ProviderLinks(provider.links),
        Capability.SERVICE_LOGS: lambda: RunDirLogs(ctx),
        Capability.DATABASE: lambda: provider.database,
        Capability.HSM_SHIM: lambda: provider.shim.control,  # a harness.shim.ShimControl
        Capability.HSM_TOKEN: lambda: SoftHsmToken(ctx, provider.softhsm),
        Capability.CONTAINER_NETWORK: lambda: ProviderContainerNetwork(provider),
        Capability.VAULT: lambda: provider.vault.api,  # a harness.services.vault.VaultAPI
    }
    caps = environment_capabilities(ctx.topology, provider.name)
    return {c: builders[c]() for c in caps if c is not Capability.API}
