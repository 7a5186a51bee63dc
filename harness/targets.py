"""An existing cloud as a target (harness.target.Target): the conformance suites and
triage run against it the same way they run against an environment the harness started.
Its only capability is the API: nothing else is reachable through clouds.yaml.

A targets file names one clouds.yaml cloud per role the suites act as, e.g.

    policy: legacy              # or secure-rbac
    backends: [simple_crypto]   # what the cloud's default secret store is built on
    clouds:
      creator: mycloud-creator
      member: mycloud-member
      reader: mycloud-reader
      other-member: mycloud-otherproject-member
      service: mycloud-octavia
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.errors import EndpointUnreachable, HarnessError
from harness.identity import HTTP_TIMEOUT
from harness.target import Capability, Facets
from harness.topology import Backend, load_yaml_model


class TargetsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Literal["legacy", "secure-rbac"] = "legacy"
    backends: list[Backend] = Field(default_factory=lambda: ["simple_crypto"])
    # Whether the cloud runs barbican-worker (orders are processed asynchronously).
    async_orders: bool = False
    clouds: dict[str, str] = Field(min_length=1)


@dataclass(frozen=True)
class CloudNode:
    name: str
    url: str


@dataclass
class CloudTarget:
    default_cloud: str
    spec: TargetsFile
    targets_path: Path | None = None
    _sessions: dict = field(default_factory=dict)

    @classmethod
    def load(cls, cloud: str, targets_path: str | Path | None) -> "CloudTarget":
        if targets_path:
            spec = load_yaml_model(targets_path, TargetsFile)
        else:
            spec = TargetsFile(clouds={"member": cloud, "creator": cloud})
        target = cls(cloud, spec, Path(targets_path).resolve() if targets_path else None)
        target.node()  # fail now, with the cloud's name, if the catalog has no key-manager
        return target

    @property
    def name(self) -> str:
        return f"cloud '{self.default_cloud}'"

    @property
    def run_dir(self) -> Path:
        """Where commands against this cloud write (reports/runs/cloud-<name>)."""
        from harness.environment import runs_dir

        d = runs_dir() / f"cloud-{self.default_cloud}"
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return d

    @property
    def capabilities(self) -> frozenset[Capability]:
        return Facets(self.name, {}).capabilities

    def facet(self, capability: Capability, what: str = "this"):
        return Facets(self.name, {}).get(capability, what)

    @property
    def async_orders(self) -> bool:
        return self.spec.async_orders

    def pytest_args(self) -> list[str]:
        args = ["--barbican-cloud", self.default_cloud]
        return args + (["--barbican-targets", str(self.targets_path)] if self.targets_path else [])

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

    def session(self, role: str | None = None):
        import openstack.config

        role = role or self.writer_role
        if role not in self.spec.clouds:
            raise HarnessError(f"the targets file names no cloud for role '{role}'")
        if role not in self._sessions:
            try:
                region = openstack.config.OpenStackConfig().get_one(cloud=self.spec.clouds[role])
            except Exception as exc:  # noqa: BLE001 - openstack.config raises several kinds
                raise HarnessError(f"cloud '{self.spec.clouds[role]}': {exc}") from None
            sess = region.get_session()
            sess.timeout = HTTP_TIMEOUT
            self._sessions[role] = sess
        return self._sessions[role]

    @property
    def nodes(self) -> list[CloudNode]:
        return [self.node()]

    def node(self, name=None) -> CloudNode:
        try:
            url = self.session().get_endpoint(service_type="key-manager", interface="public")
        except Exception as exc:  # noqa: BLE001
            raise EndpointUnreachable(f"cloud '{self.default_cloud}': no key-manager endpoint ({exc})") from None
        return CloudNode("cloud", url.rstrip("/"))

    def barbican(self, role: str | None = None, node=None, microversion: str | None = None):
        from barbicanclient import client as bclient

        kwargs = {"microversion": microversion} if microversion else {}
        return bclient.Client(session=self.session(role), endpoint=self.node().url, **kwargs)
