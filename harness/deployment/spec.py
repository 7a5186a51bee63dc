"""The deployment file: a Kolla-style Barbican on one or more Docker hosts.

    name: staging                          # optional: state in reports/runs/deployment-<name>
    api:
      cloud: staging-creator               # clouds.yaml cloud of the default role
      targets: staging-targets.yaml        # optional targets file (harness.targets): a cloud
                                           # per role, policy, backends, async_orders
    defaults:                              # for every Barbican container below
      docker_host: unix:///var/run/docker.sock   # or tcp://host:2375, ssh://user@host
      config: /etc/barbican/barbican.conf  # barbican.conf inside the container
      log: stdout                          # or a file inside it: /var/log/kolla/barbican/barbican-api.log
      pkcs11_module: /usr/lib/softhsm/libsofthsm2.so   # optional: the PKCS#11 module Barbican loads
    nodes:                                 # the Barbican API nodes
      barbican-1: {container: barbican_api, url: "https://ctl1.example:9311", docker_host: "ssh://ops@ctl1"}
      barbican-2: {container: barbican_api, url: "https://ctl2.example:9311", docker_host: "ssh://ops@ctl2"}
    workers:                               # optional: barbican-worker containers
      barbican-worker-1: {container: barbican_worker, docker_host: "ssh://ops@ctl1"}
    keystone: {container: keystone, docker_host: "ssh://ops@ctl1"}       # optional
    database: {container: mariadb, url: "mysql+pymysql://barbican:...@db.example/barbican"}  # optional
    rabbitmq: {container: rabbitmq}        # optional
    docker_tls: {ca_cert: ..., client_cert: ..., client_key: ...}   # optional, for tcp:// hosts

Relative paths (the targets file, TLS files) are relative to the deployment file. A
`database.url` the harness can reach from where it runs grants direct SQL access (the
file then holds a password: keep it 0600).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.topology import load_yaml_model

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
DOCKER_SCHEMES = ("unix://", "tcp://", "ssh://")
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DEFAULT_CONFIG = "/etc/barbican/barbican.conf"
STDOUT = "stdout"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _docker_host(value: str) -> str:
    if not value.startswith(DOCKER_SCHEMES):
        raise ValueError(f"'{value}' is not a DOCKER_HOST value; allowed: "
                         f"{', '.join(s + '...' for s in DOCKER_SCHEMES)}")
    return value


def _inside(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"'{value}': an absolute path inside the container")
    return value


def _log(value: str) -> str:
    if value != STDOUT and not value.startswith("/"):
        raise ValueError(f"'{value}': allowed: 'stdout' (the container's output) or an absolute file path inside it")
    return value


def _url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError(f"'{value}': the node's URL as the harness reaches it, http(s)://host:port")
    return value.rstrip("/")


DockerHost = Annotated[str, AfterValidator(_docker_host)]
InsidePath = Annotated[str, AfterValidator(_inside)]
LogSource = Annotated[str, AfterValidator(_log)]


class Api(_Strict):
    cloud: str = Field(min_length=1)
    targets: Optional[str] = None


class Defaults(_Strict):
    docker_host: DockerHost = DEFAULT_DOCKER_HOST
    config: InsidePath = DEFAULT_CONFIG
    log: LogSource = STDOUT
    pkcs11_module: Optional[InsidePath] = None


class Container(_Strict):
    """A container of the deployment; unset fields come from `defaults`."""

    container: str = Field(pattern=NAME)
    docker_host: Optional[DockerHost] = None


class BarbicanContainer(Container):
    config: Optional[InsidePath] = None
    log: Optional[LogSource] = None
    pkcs11_module: Optional[InsidePath] = None


class ApiNode(BarbicanContainer):
    url: Annotated[str, AfterValidator(_url)]


class Database(Container):
    url: Optional[str] = Field(None, pattern=r"^mysql(\+pymysql)?://")


class DockerTls(_Strict):
    ca_cert: str
    client_cert: str
    client_key: str


class DeploymentFile(_Strict):
    name: Optional[str] = Field(None, pattern=NAME)
    api: Api
    defaults: Defaults = Field(default_factory=Defaults)
    nodes: dict[str, ApiNode] = Field(min_length=1)
    workers: dict[str, BarbicanContainer] = Field(default_factory=dict)
    keystone: Optional[Container] = None
    database: Optional[Database] = None
    rabbitmq: Optional[Container] = None
    docker_tls: Optional[DockerTls] = None

    @field_validator("nodes", "workers")
    @classmethod
    def _names(cls, v: dict) -> dict:
        for name in v:
            if not re.match(NAME, name):
                raise ValueError(f"name '{name}': letters, digits, '.', '_' and '-' only (it names files)")
        return v

    @model_validator(mode="after")
    def _distinct(self) -> "DeploymentFile":
        clash = set(self.nodes) & set(self.workers)
        if clash:
            raise ValueError(f"{sorted(clash)} named both as a node and as a worker")
        return self


class Deployment:
    """A validated deployment file, with every container's settings resolved."""

    def __init__(self, path: Path, spec: DeploymentFile):
        self.path = path
        self.spec = spec

    @classmethod
    def load(cls, path: str | Path) -> "Deployment":
        path = Path(path).resolve()
        return cls(path, load_yaml_model(path, DeploymentFile))

    @property
    def name(self) -> str:
        return self.spec.name or re.sub(r"[^A-Za-z0-9_.-]", "-", self.path.stem)

    def relative(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def docker_host(self, c: Container) -> str:
        return c.docker_host or self.spec.defaults.docker_host

    def barbican(self) -> dict[str, BarbicanContainer]:
        """API nodes and workers by name: every container running Barbican."""
        return {**self.spec.nodes, **self.spec.workers}

    def config_path(self, name: str) -> str:
        return self.barbican()[name].config or self.spec.defaults.config

    def log(self, name: str) -> str:
        return self.barbican()[name].log or self.spec.defaults.log

    def pkcs11_module(self, name: str) -> str | None:
        return self.barbican()[name].pkcs11_module or self.spec.defaults.pkcs11_module
