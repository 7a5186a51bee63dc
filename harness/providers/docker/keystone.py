"""Keystone in a container (db_sync and uWSGI in one, bootstrap by `exec`), and its
address inside the network."""

from __future__ import annotations

import time
from pathlib import Path

from harness.ports import free_port
from harness.providers.docker.database import DatabaseInside
from harness.providers.docker.network import HOST, KEYSTONE_PORT
from harness.providers.docker.service import ContainerService, render_for_container
from harness.services.keystone import REGION, write_key_repository


class DockerKeystone(ContainerService):
    name = "keystone"
    role = "keystone"
    port_key, inner_port = "keystone", KEYSTONE_PORT

    def __init__(self, rt, database):
        super().__init__(rt)
        self.database = database
        self.ctx.ports.setdefault("keystone", free_port())
        self.via_proxy_port: int | None = None  # Barbican's way in, when links are on

    @property
    def dir(self) -> Path:
        return self.ctx.run_dir / "keystone"

    @property
    def conf(self) -> Path:
        return self.dir / "keystone.conf"

    @property
    def url(self) -> str:
        """The public endpoint: what clients on this machine use."""
        return f"http://{HOST}:{self.ctx.ports['keystone']}/v3"

    @property
    def internal_url(self) -> str:
        """The catalog's internal/admin endpoint: what Barbican's keystonemiddleware uses."""
        if self.via_proxy_port:
            return f"http://proxy:{self.via_proxy_port}/v3"
        return f"http://keystone:{KEYSTONE_PORT}/v3"

    def render(self) -> None:
        self.synced_marker.unlink(missing_ok=True)
        self.sync_failed_marker.unlink(missing_ok=True)
        write_key_repository(self.dir / "fernet-keys")
        write_key_repository(self.dir / "credential-keys")
        self.ctx.render("keystone.conf.j2", self.conf, run_id=self.ctx.run_id,
                        log_file=self.ctx.logs_dir / "keystone-app.log",
                        db_url=DatabaseInside(self.database).url("keystone"),
                        fernet_dir=self.dir / "fernet-keys", credential_dir=self.dir / "credential-keys")
        render_for_container(self.ctx, "uwsgi.ini.j2", self.dir / "uwsgi.ini", port=KEYSTONE_PORT,
                              must_contain=rf"^[\w-]*socket\s*=\s*(0\.0\.0\.0)?:{KEYSTONE_PORT}\s*$",
                              module="harness.wsgi.keystone_api:application", processes=1, threads=8,
                              procname=f"keystone-{self.ctx.run_id}")

    def env(self) -> dict[str, str]:
        return {"OS_KEYSTONE_CONFIG_FILES": str(self.conf), "HOME": str(self.dir)}

    @property
    def synced_marker(self) -> Path:
        return self.dir / ".db_synced"

    @property
    def sync_failed_marker(self) -> Path:
        return self.dir / ".db_sync_failed"

    def argv(self) -> list[str]:
        # db_sync runs while uWSGI loads the app (loading does not touch the database;
        # each takes seconds of imports): the markers (same paths on the host) tell
        # `wait_started` when bootstrap may run.
        script = (f'(keystone-manage --config-file "$OS_KEYSTONE_CONFIG_FILES" db_sync '
                  f'&& touch {self.synced_marker} || touch {self.sync_failed_marker}) & '
                  f'exec uwsgi --ini {self.dir / "uwsgi.ini"}')
        return ["sh", "-c", script]

    def bootstrap(self) -> None:
        self.rt.exec(self.name, [
            "keystone-manage", "--config-file", str(self.conf),
            "bootstrap", "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
            "--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone",
            "--bootstrap-region-id", REGION, "--bootstrap-public-url", self.url,
            "--bootstrap-internal-url", self.internal_url, "--bootstrap-admin-url", self.internal_url,
        ], env={"OS_BOOTSTRAP_PASSWORD": self.ctx.secrets.admin_password},
            what="keystone-manage bootstrap", log=self.ctx.logs_dir / "keystone-manage.log")

    def wait_started(self, timeout: float) -> None:
        """Until db_sync is done (bootstrap needs the schema)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.synced_marker.exists():
                return
            if self.sync_failed_marker.exists():
                raise self.fail("keystone-manage db_sync failed (see logs/keystone.log)")
            if self._exited():
                raise self.fail("keystone-manage db_sync failed")
            time.sleep(0.2)
        raise self.fail(f"db_sync did not finish within {timeout:.0f} s")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        self.wait_http(self.url, 200, timeout)


class KeystoneInside:
    """Keystone as BarbicanConfig asks for it (url / url_on)."""

    def __init__(self, keystone: DockerKeystone):
        self.keystone = keystone

    @property
    def url(self) -> str:
        return f"http://keystone:{KEYSTONE_PORT}/v3"

    def url_on(self, port: int | None) -> str:
        return f"http://proxy:{port}/v3" if port else self.url
