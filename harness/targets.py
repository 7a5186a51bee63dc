"""An existing cloud as a target (harness.target.Target): conformance, triage, load,
scenarios and API-state faults run against it the same way they run against an
environment the harness started. Its only capability is the API: nothing else is
reachable through clouds.yaml.

A targets file names one clouds.yaml cloud per role the harness acts as, e.g.

    policy: legacy              # or secure-rbac
    backends: [simple_crypto]   # what the cloud's default secret store is built on
    async_orders: false         # true when barbican-worker processes orders
    nodes:                      # optional: each API node's own URL (default: the catalog's)
      barbican-1: https://kms-1.example:9311
      barbican-2: https://kms-2.example:9311
    clouds:
      creator: mycloud-creator
      member: mycloud-member
      reader: mycloud-reader
      other-creator: mycloud-otherproject-creator
      service: mycloud-octavia
      admin: mycloud-project-admin

The harness keeps what it must remember about the cloud (the fault journal, what it
wrote) in reports/runs/cloud-<name>/ (0700), so `heal --cloud NAME` works after a crash.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.errors import EndpointUnreachable, HarnessError
from harness.identity import HTTP_TIMEOUT, Credential
from harness.target import Capability, Facets
from harness.topology import Backend, load_yaml_model

TARGET_FILE = "target.json"  # in the state directory: how to open the target again


class TargetsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Literal["legacy", "secure-rbac"] = "legacy"
    backends: list[Backend] = Field(default_factory=lambda: ["simple_crypto"])
    # Whether the cloud runs barbican-worker (orders are processed asynchronously).
    async_orders: bool = False
    nodes: dict[str, str] = Field(default_factory=dict)
    clouds: dict[str, str] = Field(min_length=1)


@dataclass(frozen=True)
class CloudNode:
    name: str
    url: str


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


@dataclass
class CloudTarget:
    default_cloud: str
    spec: TargetsFile
    targets_path: Path | None = None
    _sessions: dict = field(default_factory=dict)
    _regions: dict = field(default_factory=dict)

    @classmethod
    def load(cls, cloud: str, targets_path: str | Path | None) -> "CloudTarget":
        if targets_path:
            spec = load_yaml_model(targets_path, TargetsFile)
        else:
            spec = TargetsFile(clouds={"member": cloud, "creator": cloud})
        target = cls(cloud, spec, Path(targets_path).resolve() if targets_path else None)
        target.nodes  # noqa: B018 - fail now, naming the cloud, if there is no key-manager endpoint
        (target.run_dir / TARGET_FILE).write_text(json.dumps(
            {"kind": "cloud", "cloud": cloud, "targets": str(target.targets_path or "")}))
        return target

    # -- identity of the target ----------------------------------------------------------
    @property
    def name(self) -> str:
        return f"cloud '{self.default_cloud}'"

    @property
    def run_id(self) -> str:
        return f"cloud-{_safe(self.default_cloud)}"

    @property
    def run_dir(self) -> Path:
        """The state directory (journal, what was written): reports/runs/cloud-<name>."""
        from harness.environment import runs_dir

        d = runs_dir() / self.run_id
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return d

    foreign = True  # someone else's: nothing destructive without an explicit flag

    @property
    def capabilities(self) -> frozenset[Capability]:
        return Facets(self.name, {}).capabilities

    def facet(self, capability: Capability, what: str = "this"):
        return Facets(self.name, {}).get(capability, what)

    def pytest_args(self) -> list[str]:
        args = ["--barbican-cloud", self.default_cloud]
        return args + (["--barbican-targets", str(self.targets_path)] if self.targets_path else [])

    def environ(self, **extra: str) -> dict:
        from harness.procs import RUN_MARKER

        return {**os.environ, RUN_MARKER: self.run_id, **extra}

    def facts(self) -> dict:
        return {"run_id": self.run_id, "target": "existing cloud", "cloud": self.default_cloud,
                "backends": list(self.backends), "policy": self.policy, "barbican_version": self.api_version(),
                "nodes": [{"name": n.name, "url": n.url} for n in self.nodes], "keystone_url": self.keystone_url}

    # -- what the cloud is ---------------------------------------------------------------
    @property
    def async_orders(self) -> bool:
        return self.spec.async_orders

    @property
    def policy(self) -> str:
        return self.spec.policy

    @property
    def backends(self) -> list[str]:
        return self.spec.backends

    @property
    def writer_role(self) -> str:
        return "member" if self.policy == "secure-rbac" else "creator"

    @property
    def roles(self) -> list[str]:
        return sorted(self.spec.clouds)

    def _region(self, role: str):
        import openstack.config

        if role not in self.spec.clouds:
            raise HarnessError(f"the targets file names no cloud for role '{role}'; roles: {self.roles}")
        if role not in self._regions:
            try:
                self._regions[role] = openstack.config.OpenStackConfig().get_one(cloud=self.spec.clouds[role])
            except Exception as exc:  # noqa: BLE001 - openstack.config raises several kinds
                raise HarnessError(f"cloud '{self.spec.clouds[role]}': {exc}") from None
        return self._regions[role]

    def renew_sessions(self) -> None:
        """New tokens from here on (each session authenticates again on its next request)."""
        self._sessions.clear()

    def session(self, role: str | None = None):
        role = role or self.writer_role
        if role not in self._sessions:
            sess = self._region(role).get_session()
            sess.timeout = HTTP_TIMEOUT
            self._sessions[role] = sess
        return self._sessions[role]

    @property
    def credentials(self) -> dict[str, Credential]:
        """Password credentials per role, for what runs in other processes (Locust)."""
        out = {}
        for role in self.spec.clouds:
            auth = self._region(role).config.get("auth", {})
            if not auth.get("password") or not auth.get("username"):
                raise HarnessError(f"cloud '{self.spec.clouds[role]}' (role {role}): the load needs password "
                                   "authentication (auth: username, password, project_name) in clouds.yaml")
            out[role] = Credential(role, auth["username"], auth.get("project_name", ""), auth["password"],
                                   auth.get("user_domain_name") or auth.get("domain_name") or "Default")
        return out

    @property
    def keystone_url(self) -> str:
        return self._region(self.writer_role).config["auth"]["auth_url"]

    @property
    def nodes(self) -> list[CloudNode]:
        if self.spec.nodes:
            return [CloudNode(n, u.rstrip("/")) for n, u in self.spec.nodes.items()]
        return [self._catalog_node()]

    def _catalog_node(self) -> CloudNode:
        try:
            url = self.session().get_endpoint(service_type="key-manager", interface="public")
        except Exception as exc:  # noqa: BLE001
            raise EndpointUnreachable(f"cloud '{self.default_cloud}': no key-manager endpoint ({exc})") from None
        if not url:
            raise EndpointUnreachable(f"cloud '{self.default_cloud}': the catalog has no key-manager endpoint")
        return CloudNode("cloud", url.rstrip("/"))

    def node(self, name=None) -> CloudNode:
        nodes = self.nodes
        if name is None:
            return nodes[0]
        if isinstance(name, int) or str(name).isdigit():
            return nodes[int(name) - 1]
        for n in nodes:
            if n.name == name:
                return n
        raise HarnessError(f"no node '{name}' in {self.name}; nodes: {[n.name for n in nodes]}")

    def api_version(self) -> str:
        return barbican_build(self.session(), self.nodes[0].url)

    def barbican(self, role: str | None = None, node=None, microversion: str | None = None):
        from barbicanclient import client as bclient

        kwargs = {"microversion": microversion} if microversion else {}
        return bclient.Client(session=self.session(role), endpoint=self.node(node).url, **kwargs)


def barbican_build(session, url: str) -> str:
    """The Barbican release a node runs, as it says itself (GET /?build)."""
    try:
        r = session.get(url + "/?build", raise_exc=False, timeout=HTTP_TIMEOUT, authenticated=False)
        return str(r.json().get("build") or "unknown")
    except Exception:  # noqa: BLE001 - informative only
        return "unknown"


def open_target(run: str | None = None, cloud: str | None = None, targets: str | Path | None = None,
                deployment: str | Path | None = None, *, must_be_up: bool = True):
    """The one way a command gets its target: a harness environment (`--run`, default the
    newest one up), an existing cloud (`--cloud` with an optional `--targets` file) or a
    deployment described by a file (`--deployment`)."""
    chosen = [n for n, v in (("--run", run), ("--cloud", cloud), ("--deployment", deployment)) if v]
    if len(chosen) > 1:
        raise HarnessError(f"name one target: {' or '.join(chosen)}, not several")
    if targets and not cloud:
        raise HarnessError("--targets goes with --cloud (it names a cloud per role)")
    if cloud:
        return CloudTarget.load(cloud, targets)
    if deployment:
        from harness.deployment import DeploymentTarget

        return DeploymentTarget.load(deployment)
    from harness.environment import Environment

    return Environment.attach(run)


def reopen_target(state_dir: Path):
    """A target from its state directory (what `heal RUN_ID` does after a crash)."""
    spec = json.loads((state_dir / TARGET_FILE).read_text())
    if spec["kind"] == "cloud":
        return CloudTarget.load(spec["cloud"], spec["targets"] or None)
    from harness.deployment import DeploymentTarget

    return DeploymentTarget.load(spec["deployment"])
