"""What every command runs against: a Target, and what it can do (its capabilities).

A target is a Barbican the harness talks to: an environment it brought up (local processes
or containers), or an existing cloud known only through clouds.yaml. Every target has the
API (nodes, a session and a Barbican client per role). Anything beyond the API is a
*capability* the target declares, reached through one small interface each (a facet):

    target.capabilities                   # frozenset of Capability
    target.facet(Capability.NODE_CONTROL).kill("barbican-2")

A fault (harness.faults) declares the capabilities it needs; the fault engine refuses a
fault the target cannot do before anything is journaled, naming what is missing. Triage
uses what a target has (database, logs) and does without what it has not.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

from harness.errors import HarnessError


class Capability(str, enum.Enum):
    API = "api"
    KEYSTONE_ADMIN = "keystone_admin"
    NODE_CONTROL = "node_control"
    CONFIG_WRITE = "config_write"
    MANAGE = "manage"
    HSM_SHIM = "hsm_shim"
    HSM_TOKEN = "hsm_token"
    NETWORK_LINKS = "network_links"
    DATABASE = "database"
    SERVICE_LOGS = "service_logs"
    CONTAINER_NETWORK = "container_network"
    VAULT = "vault"

    def __str__(self) -> str:
        return self.value


# One line each: what having the capability means (fault refusals and `fault list` say it).
CAPABILITY_HELP: dict[Capability, str] = {
    Capability.API: "the Barbican API, with a user per role",
    Capability.KEYSTONE_ADMIN: "Keystone admin rights: make projects and users",
    Capability.NODE_CONTROL: "kill, freeze and restart API nodes and workers",
    Capability.CONFIG_WRITE: "restart an API node with a changed barbican.conf",
    Capability.MANAGE: "run barbican-manage on a node, with that node's config",
    Capability.HSM_SHIM: "the PKCS#11 fault shim between Barbican and its HSM",
    Capability.HSM_TOKEN: "the HSM token itself: snapshot, restore, delete keys",
    Capability.NETWORK_LINKS: "the fault proxy on the links Barbican depends on",
    Capability.DATABASE: "direct SQL access to Barbican's database",
    Capability.SERVICE_LOGS: "the services' logs",
    Capability.CONTAINER_NETWORK: "the containers' network (disconnect a node)",
    Capability.VAULT: "operator (root) access to the Vault/OpenBao server behind the vault store",
}


class MissingCapability(HarnessError):
    """A command needs something the target cannot do."""

    def __init__(self, target_name: str, needed: Iterable[Capability], has: Iterable[Capability],
                 what: str = "this", why_not: Mapping[Capability, str] | None = None):
        self.needed = sorted(needed, key=lambda c: c.value)
        names = ", ".join(f"'{c.value}' ({CAPABILITY_HELP[c]})" for c in self.needed)
        have = ", ".join(sorted(c.value for c in has)) or "nothing"
        # A target that could have a capability but not here says why (host networking ...).
        reasons = "".join(f"; no '{c.value}': {why_not[c]}" for c in self.needed if why_not and c in why_not)
        super().__init__(f"{what} needs capability {names}; target {target_name} has: {have}{reasons}")


# -- facets: one interface per capability ------------------------------------------------

class NodeControl(Protocol):
    """Capability.NODE_CONTROL. Nodes and workers by name ("barbican-2", "barbican-worker-1")."""

    def kill(self, node: str) -> None: ...          # SIGKILL, or a container kill
    def pause(self, node: str) -> None: ...         # SIGSTOP, or a container pause
    def resume(self, node: str) -> None: ...
    def stop(self, node: str) -> None: ...          # a clean stop (kept stopped)
    def restart(self, node: str) -> None: ...       # same config; waits until it serves
    def workers(self) -> list[str]: ...
    def kill_worker(self, worker: str) -> None: ...
    def restart_worker(self, worker: str) -> None: ...


class ConfigWrite(Protocol):
    """Capability.CONFIG_WRITE: restart a node with config overrides ({} = the original).

    Overrides are what a config change means, not how a file looks: `keks` (list: the
    simple_crypto KEKs, first one wraps), `p11` (dict merged into [p11_crypto_plugin]),
    `single_store_crypto` (list: one store_crypto store on just these crypto plugins).

    `keep` runs in a fault's prepare, before anything changes: it keeps what heal needs to
    bring the node's config back and returns what the journal records of it (paths and
    hashes, never the content). An environment re-renders its configs and keeps nothing."""

    def restart_with(self, node: str, overrides: dict[str, Any]) -> None: ...
    def overrides(self, node: str) -> dict[str, Any]: ...
    def keep(self, node: str) -> dict[str, Any]: ...


class Manage(Protocol):
    """Capability.MANAGE: barbican-manage as an operator runs it on a node; its output."""

    def run(self, node: str, *args: str, timeout: float = 120) -> str: ...


class HsmShimControl(Protocol):
    """Capability.HSM_SHIM: the rules every Barbican process's shim reads, and the call
    statistics they write (harness.shim.ShimControl)."""

    def rules(self) -> list: ...
    def set_rules(self, rules: list, settle: bool = True) -> None: ...
    def clear(self, settle: bool = True) -> None: ...
    def stats(self) -> dict: ...
    def reset_stats(self) -> None: ...


class HsmToken(Protocol):
    """Capability.HSM_TOKEN: the token Barbican's p11_crypto plugin uses."""

    token_label: str
    mkek_label: str
    hmac_label: str

    def snapshot(self, dest: Path) -> None: ...     # the token as it is now
    def restore(self, src: Path) -> None: ...       # nodes must be stopped
    def delete_key(self, label: str) -> None: ...


class NetworkLinks(Protocol):
    """Capability.NETWORK_LINKS: links through the fault proxy (Toxiproxy API objects)."""

    def names(self) -> list[str]: ...
    def get(self, name: str): ...


class Database(Protocol):
    """Capability.DATABASE: a DB-API connection to one of the environment's databases."""

    def connect(self, database: str, timeout: float = 5.0): ...


class ServiceLogs(Protocol):
    """Capability.SERVICE_LOGS: Barbican's application logs, one file per node."""

    def app_logs(self) -> dict[str, Path]: ...      # node or worker name -> log file
    def dir(self) -> Path: ...


class ContainerNetwork(Protocol):
    """Capability.CONTAINER_NETWORK: cut one container off its network and back."""

    def disconnect(self, node: str) -> None: ...
    def reconnect(self, node: str) -> None: ...


class VaultAdmin(Protocol):
    """Capability.VAULT: what Vault's operator does to the server behind Barbican's vault
    store (harness.services.vault.VaultAPI). Secrets (unseal keys, root token, Barbican's
    secret_id) stay inside the facet: no method takes or returns one."""

    mount: str                                      # Barbican's KV mount

    def seal(self) -> None: ...
    def unseal(self) -> None: ...                   # with the unseal keys; waits until active
    def revoke_logins(self) -> None: ...            # every token Barbican's AppRole login issued
    def destroy_secret_id(self) -> None: ...        # Barbican's secret_id, as if it had expired
    def reissue_secret_id(self) -> None: ...        # the same value Barbican's config holds
    def unlock_logins(self) -> int: ...             # lift the user lockout of failed logins
    def policy(self) -> str: ...                    # Barbican's policy (HCL: paths, no secret)
    def write_policy(self, text: str) -> None: ...
    def delete_policy(self) -> None: ...
    def mounts(self) -> list[str]: ...
    def disable_mount(self) -> None: ...
    def enable_mount(self) -> None: ...             # empty, with the topology's KV version
    def token_accessors(self) -> set[str]: ...
    def snapshot(self, dest: Path) -> int: ...      # Raft snapshot, 0600; its size
    def restore(self, src: Path) -> None: ...


class Target(Protocol):
    """What every command needs. Implemented by harness.environment.Environment (local and
    docker providers) and harness.targets.CloudTarget (an existing cloud)."""

    @property
    def name(self) -> str: ...
    @property
    def run_dir(self) -> Path: ...
    @property
    def nodes(self) -> list: ...                    # objects with .name and .url
    def node(self, name: str | int | None = None): ...
    @property
    def policy(self) -> str: ...
    @property
    def backends(self) -> list[str]: ...            # the default store's first
    @property
    def async_orders(self) -> bool: ...
    @property
    def roles(self) -> list[str]: ...
    @property
    def writer_role(self) -> str: ...
    def session(self, role: str | None = None): ...
    def renew_sessions(self) -> None: ...           # new tokens on the next requests
    def barbican(self, role: str | None = None, node: str | int | None = None,
                 microversion: str | None = None): ...
    @property
    def capabilities(self) -> frozenset[Capability]: ...
    def facet(self, capability: Capability): ...
    def pytest_args(self) -> list[str]: ...        # how the conformance suites find it


class Facets:
    """The facets a target has, keyed by capability; asking for a missing one raises
    MissingCapability naming it (never an AttributeError deep inside a fault)."""

    def __init__(self, target_name: str, facets: dict[Capability, object]):
        self._name = target_name
        self._facets = {Capability.API: None, **facets}

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset(self._facets)

    def get(self, capability: Capability, what: str = "this"):
        if capability not in self._facets:
            raise MissingCapability(self._name, [capability], self.capabilities, what)
        return self._facets[capability]

    def require(self, needed: Iterable[Capability], what: str = "this") -> None:
        missing = set(needed) - set(self._facets)
        if missing:
            raise MissingCapability(self._name, missing, self.capabilities, what)


@dataclass(frozen=True)
class Traits:
    """What a fault or a scenario may ask of a target before anything runs: known for a
    live target, and for an environment from its topology and provider alone (so a
    scenario file is checked before its environment exists)."""

    name: str
    capabilities: frozenset[Capability]
    backends: tuple[str, ...] = ()
    async_orders: bool = False
    nodes: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    # Capabilities the kind of target has but this one has not, with the reason.
    why_not: Mapping[Capability, str] = field(default_factory=dict, compare=False)

    def require(self, needed: Iterable[Capability], what: str = "this") -> None:
        missing = set(needed) - set(self.capabilities)
        if missing:
            raise MissingCapability(self.name, missing, self.capabilities, what, self.why_not)


def traits_of(target) -> Traits:
    """A live target's traits."""
    links: tuple[str, ...] = ()
    if Capability.NETWORK_LINKS in target.capabilities:
        links = tuple(target.facet(Capability.NETWORK_LINKS).names())
    return Traits(target.name, frozenset(target.capabilities), tuple(target.backends),
                  bool(target.async_orders), tuple(n.name for n in target.nodes), links,
                  dict(getattr(target, "why_not", None) or {}))


def require(target, needed: Iterable[Capability], what: str = "this") -> None:
    """Raise MissingCapability when the target lacks any of `needed`."""
    missing = set(needed) - set(target.capabilities)
    if missing:
        raise MissingCapability(target.name, missing, target.capabilities, what,
                                getattr(target, "why_not", None))
