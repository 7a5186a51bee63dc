"""What every service module of one environment shares: the run directory, the
topology, the generated secrets, the ports and the config renderer."""

from __future__ import annotations

import base64
import json
import os
import secrets as _rand
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from harness import redact
from harness.topology import Topology

TEMPLATES = Path(__file__).parent / "templates"
_jinja = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    undefined=jinja2.StrictUndefined,  # a missing value is a bug, not an empty string
    keep_trailing_newline=True,
    autoescape=False,
)


def fernet_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def password() -> str:
    return _rand.token_urlsafe(18)


@dataclass
class EnvSecrets:
    """Fresh per environment. Stored in the run dir with mode 0600 (so `down`, `heal` and
    faults work after a crash), registered with the redactor, never printed."""

    db_password: str = field(default_factory=password)
    admin_password: str = field(default_factory=password)
    barbican_service_password: str = field(default_factory=password)
    user_password: str = field(default_factory=password)  # every seeded user (per-env, random)
    kek: str = field(default_factory=fernet_key)
    hsm_pin: str = field(default_factory=lambda: str(_rand.randbelow(10**8)).zfill(8))
    hsm_so_pin: str = field(default_factory=lambda: str(_rand.randbelow(10**8)).zfill(8))
    rabbit_password: str = field(default_factory=password)

    def register(self) -> "EnvSecrets":
        redact.register(*asdict(self).values())
        return self

    def save(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)

    @classmethod
    def load(cls, path: Path) -> "EnvSecrets":
        return cls(**json.loads(path.read_text())).register()


@dataclass
class RunContext:
    run_id: str
    run_dir: Path
    topology: Topology
    secrets: EnvSecrets
    ports: dict[str, int] = field(default_factory=dict)
    # The Barbican build the environment runs (harness.builds.Build); None: the harness's own.
    build: Any = None

    @property
    def bin_dir(self) -> Path:
        # The venv the harness runs in holds keystone, uwsgi and its own barbican; Barbican's
        # services take their programs from their build (harness.builds.Build.bin).
        return Path(sys.prefix) / "bin"

    @property
    def barbican_build(self):
        """The build Barbican's services run unless told another (a node during an upgrade)."""
        if self.build is None:
            from harness.builds import own_build

            self.build = own_build()
        return self.build

    def bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    @property
    def logs_dir(self) -> Path:
        d = self.run_dir / "logs"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def environ(self, **extra: str) -> dict:
        """The environment for every process of this run: ours, plus the run marker."""
        from harness.procs import RUN_MARKER

        return {**os.environ, RUN_MARKER: self.run_id, **extra}

    def path(self, *parts: str) -> Path:
        p = self.run_dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def render(self, template: str, dest: Path, **values) -> Path:
        """Render a config template; configs hold secrets, so they are 0600."""
        text = _jinja.get_template(template).render(**values)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return dest
