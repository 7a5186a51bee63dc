"""Keystone: database schema, fernet/credential keys made fresh per environment,
bootstrap, and the public API under uWSGI."""

from __future__ import annotations

import os
from pathlib import Path

from harness.context import fernet_key
from harness.ports import free_port
from harness.procs import run_command
from harness.services.base import Service

REGION = "RegionOne"


def write_key_repository(directory: Path, count: int = 2) -> None:
    """A fernet key repository as keystone-manage fernet_setup makes it: 0 is the staged
    key, the highest number the primary. Generated here so each environment has its own."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for i in range(count):
        fd = os.open(directory / str(i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(fernet_key())


class Keystone(Service):
    name = "keystone"

    def __init__(self, ctx, database):
        super().__init__(ctx)
        self.database = database
        ctx.ports.setdefault("keystone", free_port())
        # Services (Barbican's keystonemiddleware) use the catalog's internal endpoint;
        # the provider points it at the fault proxy's keystone link.
        self.internal_url: str | None = None

    @property
    def dir(self) -> Path:
        return self.ctx.run_dir / "keystone"

    @property
    def url(self) -> str:
        return self.url_on(None)

    def url_on(self, port: int | None) -> str:
        """Keystone's URL, or the same through another port (the fault proxy's link)."""
        return f"http://127.0.0.1:{port or self.ctx.ports['keystone']}/v3"

    @property
    def conf(self) -> Path:
        return self.dir / "keystone.conf"

    def _env(self) -> dict:
        return self.ctx.environ(OS_KEYSTONE_CONFIG_FILES=str(self.conf))

    def render(self) -> None:
        write_key_repository(self.dir / "fernet-keys")
        write_key_repository(self.dir / "credential-keys")
        self.ctx.render("keystone.conf.j2", self.conf, run_id=self.ctx.run_id,
                        log_file=self.ctx.logs_dir / "keystone-app.log",
                        db_url=self.database.url("keystone"),
                        fernet_dir=self.dir / "fernet-keys", credential_dir=self.dir / "credential-keys")
        self.ctx.render("uwsgi.ini.j2", self.dir / "uwsgi.ini", port=self.ctx.ports["keystone"],
                        module="harness.wsgi.keystone_api:application", processes=1, threads=8,
                        procname=f"keystone-{self.ctx.run_id}")

    def _manage(self) -> list[str]:
        return [self.ctx.bin("keystone-manage"), "--config-file", str(self.conf)]

    def prepare(self) -> None:
        self.db_sync()
        self.bootstrap()

    def db_sync(self) -> None:
        run_command(self._manage() + ["db_sync"], env=self._env(), log_path=self.manage_log,
                    timeout=300, what="keystone-manage db_sync")

    @property
    def manage_log(self) -> Path:
        return self.ctx.logs_dir / "keystone-manage.log"

    def bootstrap(self) -> None:
        """The admin user, project and role, and Keystone's own catalog entry."""
        run_command(self._manage() + [
            "bootstrap", "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
            "--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone",
            "--bootstrap-region-id", REGION, "--bootstrap-public-url", self.url,
            "--bootstrap-internal-url", self.internal_url or self.url,
            "--bootstrap-admin-url", self.internal_url or self.url,
        ], log_path=self.manage_log, timeout=120, what="keystone-manage bootstrap",
            # The password goes through the environment, never the command line.
            env=self._env() | {"OS_BOOTSTRAP_PASSWORD": self.ctx.secrets.admin_password})

    def start(self) -> None:
        self.spawn([self.ctx.bin("uwsgi"), "--ini", str(self.dir / "uwsgi.ini")],
                   env=self._env(), cwd=self.dir, ports=[self.ctx.ports["keystone"]])

    def wait_healthy(self, timeout: float = 60.0) -> None:
        self.wait_http(self.url, 200, timeout)
