"""An existing Docker-host deployment (Kolla-style: every service a container) as a
target (harness.target.Target), described by a deployment file (harness.deployment.spec).

The API side is an existing cloud (harness.targets.CloudTarget: clouds.yaml and a targets
file), with the deployment's node URLs. The containers add capabilities, each through
the Docker API of the container's host:

    node_control       docker kill / pause / unpause / stop / start, readiness over HTTP
    config_write       barbican.conf edited inside the container, original kept and restored
    service_logs       Barbican's log (container output or a file inside) in <state>/logs
    container_network  docker network disconnect / connect (not on host networking)
    hsm_shim           once `barbican-harness shim install` put the PKCS#11 fault shim in
                       the Barbican containers (harness.deployment.shim)
    database           only with a host-reachable `database.url`

It is someone else's deployment (`foreign`): the fault engine allows nothing beyond the
API without --allow-destructive and no more nodes than --max-nodes, and journals each
fault before it changes anything. State (journal, what was written, changes made,
saved configs, logs) lives in reports/runs/deployment-<name>/ (0700), so
`heal deployment-<name>` works after a crash.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from harness.deployment.docker_hosts import Box, Changes, Containers, DockerHosts, HostUnreachable, ContainerGone
from harness.deployment.spec import Deployment
from harness.target import Capability, MissingCapability
from harness.targets import TARGET_FILE, CloudTarget, TargetsFile, barbican_build
from harness.topology import load_yaml_model


@dataclass(frozen=True)
class DeploymentNode:
    name: str
    url: str
    container: str
    docker_host: str


class DeploymentTarget:
    foreign = True  # someone else's: nothing destructive without an explicit flag

    def __init__(self, deployment: Deployment, api: CloudTarget):
        self.deployment = deployment
        self.api = api
        self.hosts = DockerHosts(deployment.spec.docker_tls.model_dump() if deployment.spec.docker_tls else None,
                                 deployment.path.parent)
        self.containers = Containers(self.hosts, self._boxes())
        self.changes = Changes(self.run_dir)
        self._facets: dict[Capability, object] = {}

    @classmethod
    def load(cls, path: str | Path) -> "DeploymentTarget":
        deployment = Deployment.load(path)
        api = deployment.spec.api
        targets_path = deployment.relative(api.targets) if api.targets else None
        spec = load_yaml_model(targets_path, TargetsFile) if targets_path else \
            TargetsFile(clouds={"member": api.cloud, "creator": api.cloud})
        # The deployment file says where each node is; a targets file's own list is not used.
        spec = spec.model_copy(update={"nodes": {n: c.url for n, c in deployment.spec.nodes.items()}})
        target = cls(deployment, CloudTarget(api.cloud, spec, targets_path))
        (target.run_dir / TARGET_FILE).write_text(json.dumps({"kind": "deployment", "deployment": str(deployment.path)}))
        return target

    def _boxes(self) -> dict[str, Box]:
        d = self.deployment
        boxes = {role: Box(role, c.container, d.docker_host(c)) for role, c in d.barbican().items()}
        for role in ("keystone", "database", "rabbitmq"):
            c = getattr(d.spec, role)
            if c is not None:
                boxes[role] = Box(role, c.container, d.docker_host(c))
        return boxes

    # -- identity of the target ----------------------------------------------------------
    @property
    def name(self) -> str:
        return f"deployment '{self.deployment.name}'"

    @property
    def run_id(self) -> str:
        return f"deployment-{self.deployment.name}"

    @property
    def run_dir(self) -> Path:
        from harness.environment import runs_dir

        d = runs_dir() / self.run_id
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return d

    def environ(self, **extra: str) -> dict:
        from harness.procs import RUN_MARKER

        return {**os.environ, RUN_MARKER: self.run_id, **extra}

    def facts(self) -> dict:
        return {"run_id": self.run_id, "target": "existing deployment", "deployment": str(self.deployment.path),
                "cloud": self.api.default_cloud, "backends": list(self.backends), "policy": self.policy,
                "barbican_version": self.api_version(), "keystone_url": self.keystone_url,
                "nodes": [{"name": n.name, "url": n.url, "container": n.container, "docker_host": n.docker_host}
                          for n in self.nodes]}

    def pytest_args(self) -> list[str]:
        """The conformance suites see the API side: the cloud, with the deployment's nodes."""
        path = self.run_dir / "targets.yaml"
        path.write_text(yaml.safe_dump(self.api.spec.model_dump(mode="json"), sort_keys=False))
        return ["--barbican-cloud", self.api.default_cloud, "--barbican-targets", str(path)]

    # -- capabilities --------------------------------------------------------------------
    @cached_property
    def why_not(self) -> dict[Capability, str]:
        """Capabilities a deployment can have but this one has not, with the reason. Asked
        of the Docker hosts once (before a fault is journaled, so a refusal changes nothing)."""
        out: dict[Capability, str] = {}
        if self.deployment.spec.database is None or not self.deployment.spec.database.url:
            out[Capability.DATABASE] = "the deployment file gives no database.url the harness can reach"
        try:
            host_net = []
            for role in self.deployment.spec.nodes:
                mode = self.containers.get(role).attrs.get("HostConfig", {}).get("NetworkMode", "")
                if mode == "host" or mode.startswith("container:"):
                    host_net.append(f"{role} ({self.containers.box(role).container}: {mode} networking)")
            if host_net:
                out[Capability.CONTAINER_NETWORK] = ("no container network to disconnect on " + ", ".join(host_net))
        except (HostUnreachable, ContainerGone) as exc:
            reason = f"the containers cannot be reached: {exc}"
            for cap in (Capability.NODE_CONTROL, Capability.CONFIG_WRITE, Capability.CONTAINER_NETWORK):
                out[cap] = reason
        from harness.deployment import shim

        out[Capability.HSM_SHIM] = shim.missing_reason(self)
        return {c: r for c, r in out.items() if r}

    def _facet_builders(self) -> dict:
        from harness.deployment import facets, shim

        builders = {
            Capability.NODE_CONTROL: lambda: facets.DeploymentNodeControl(self),
            Capability.CONFIG_WRITE: lambda: facets.DeploymentConfig(self),
            Capability.SERVICE_LOGS: lambda: facets.DeploymentLogs(self),
            Capability.CONTAINER_NETWORK: lambda: facets.DeploymentNetwork(self),
            Capability.HSM_SHIM: lambda: shim.ContainerShimControl(self),
        }
        if self.deployment.spec.database and self.deployment.spec.database.url:
            builders[Capability.DATABASE] = lambda: facets.UrlDatabase(self.deployment.spec.database.url)
        return builders

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.API, *self._facet_builders()}) - set(self.why_not)

    def facet(self, capability: Capability, what: str = "this"):
        """A facet, also one whose capability is not granted now: heal reaches the
        containers through it (and each undo acts only on a container the harness changed)."""
        builders = self._facet_builders()
        if capability not in builders:
            raise MissingCapability(self.name, [capability], self.capabilities, what, self.why_not)
        if capability not in self._facets:
            self._facets[capability] = builders[capability]()
        return self._facets[capability]

    # -- the API: an existing cloud with the deployment's nodes -------------------------------
    @property
    def nodes(self) -> list[DeploymentNode]:
        d = self.deployment
        return [DeploymentNode(n, c.url, c.container, d.docker_host(c)) for n, c in d.spec.nodes.items()]

    def node(self, name=None) -> DeploymentNode:
        chosen = self.api.node(name).name  # the cloud target's rules for "2", "barbican-2", None
        return next(n for n in self.nodes if n.name == chosen)

    @property
    def async_orders(self) -> bool:
        return self.api.async_orders

    @property
    def policy(self) -> str:
        return self.api.policy

    @property
    def backends(self) -> list[str]:
        return self.api.backends

    @property
    def writer_role(self) -> str:
        return self.api.writer_role

    @property
    def roles(self) -> list[str]:
        return self.api.roles

    @property
    def credentials(self):
        return self.api.credentials

    @property
    def keystone_url(self) -> str:
        return self.api.keystone_url

    def session(self, role: str | None = None):
        return self.api.session(role)

    def renew_sessions(self) -> None:
        self.api.renew_sessions()

    def barbican(self, role: str | None = None, node=None, microversion: str | None = None):
        return self.api.barbican(role, self.node(node).name, microversion)

    def api_version(self) -> str:
        return barbican_build(self.session(), self.nodes[0].url)
