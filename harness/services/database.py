"""The database Barbican and Keystone share: a private MariaDB server per environment
(as Kolla deploys), or sqlite for the single-node quick environment.

mariadb-install-db costs a few seconds, so a freshly initialised data directory is kept
once per machine in a cache and copied into each run directory (same result, faster up).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pymysql

from harness.errors import HarnessError, ServiceStartError
from harness.ports import free_port
from harness.procs import run, run_command
from harness.services.base import Service, require_binary

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "barbican-harness"
DATABASES = ("keystone", "barbican")
DB_USER = "harness"


class MariaDB(Service):
    name = "mariadb"

    def __init__(self, ctx):
        super().__init__(ctx)
        ctx.ports.setdefault("mariadb", free_port())

    def check(self) -> None:
        self.mariadbd = require_binary("mariadbd", "mariadb-server", ("/usr/sbin/mariadbd",))
        self.install_db = require_binary("mariadb-install-db", "mariadb-server")

    @property
    def dir(self) -> Path:
        return self.ctx.run_dir / "mariadb"

    @property
    def socket(self) -> Path:
        # A unix socket path must fit in 108 bytes; deep run dirs (pytest's tmp_path) do not.
        path = self.dir / "mysqld.sock"
        if len(str(path)) < 100:
            return path
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"barbican-harness-{digest}.sock"

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self.socket.unlink(missing_ok=True)  # left behind when mariadbd was killed

    def _template_datadir(self) -> Path:
        version = run([self.mariadbd, "--version"], timeout=30, what="mariadbd --version").stdout.split()[2:3]
        tpl = CACHE / f"mariadb-datadir-{'-'.join(version) or 'unknown'}"
        if not (tpl / "mysql").is_dir():
            tmp = tpl.with_name(tpl.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            run_command([self.install_db, f"--datadir={tmp}", "--user=root", "--skip-test-db",
                         "--auth-root-authentication-method=socket"],
                        log_path=self.log_path, timeout=120, what="mariadb-install-db")
            try:
                tmp.rename(tpl)
            except OSError:  # another worker won the race; theirs is as good
                shutil.rmtree(tmp, ignore_errors=True)
        return tpl

    def prepare(self) -> None:
        shutil.copytree(self._template_datadir(), self.dir / "data", symlinks=True)

    def start(self) -> None:
        port = self.ctx.ports["mariadb"]
        self.spawn([
            self.mariadbd, "--no-defaults", f"--datadir={self.dir / 'data'}", "--user=root",
            f"--port={port}", "--bind-address=127.0.0.1", f"--socket={self.socket}",
            f"--pid-file={self.dir / 'mysqld.pid'}", f"--log-error={self.ctx.logs_dir / 'mariadb-error.log'}",
            "--skip-name-resolve", "--innodb-buffer-pool-size=64M", "--max-connections=500",
            "--character-set-server=utf8mb4", "--innodb-flush-log-at-trx-commit=2",
        ], ports=[port])

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.processes[0].popen.poll() is not None:
                raise self.fail(f"mariadbd exited with {self.processes[0].popen.returncode}")
            try:
                conn = pymysql.connect(unix_socket=str(self.socket), user="root", connect_timeout=2)
                break
            except pymysql.MySQLError as exc:
                last = exc
                time.sleep(0.1)
        else:
            raise self.fail(f"no connection on {self.socket} within {timeout:.0f} s ({last})")
        with conn:
            with conn.cursor() as cur:
                pw = self.ctx.secrets.db_password
                cur.execute(f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY %s", (pw,))
                for db in DATABASES:
                    cur.execute(f"CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET utf8mb4")
                    cur.execute(f"GRANT ALL PRIVILEGES ON {db}.* TO '{DB_USER}'@'127.0.0.1'")
            conn.commit()

    def url(self, database: str, port: int | None = None) -> str:
        return (f"mysql+pymysql://{DB_USER}:{self.ctx.secrets.db_password}@127.0.0.1:"
                f"{port or self.ctx.ports['mariadb']}/{database}?charset=utf8mb4")

    def connect(self, database: str, timeout: float = 5.0) -> pymysql.connections.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.ctx.ports["mariadb"], user=DB_USER,
                               password=self.ctx.secrets.db_password, database=database,
                               connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)


class Sqlite(Service):
    """Single node, one request at a time: the quick environment only (see topology)."""

    name = "sqlite"

    def start(self) -> None:
        (self.ctx.run_dir / "sqlite").mkdir(parents=True, exist_ok=True)

    def wait_healthy(self, timeout: float = 0) -> None:
        pass

    def url(self, database: str, port: int | None = None) -> str:
        return f"sqlite:///{self.ctx.run_dir / 'sqlite' / (database + '.db')}"

    def connect(self, database: str, timeout: float = 5.0):
        # Faults and operations that read or change Barbican's rows speak MariaDB's SQL.
        raise HarnessError("this needs direct access to Barbican's database, which the harness does on "
                           "MariaDB only; the sqlite quick topology has none: use a MariaDB topology")


def database_for(ctx) -> Service:
    if ctx.topology.database == "sqlite":
        return Sqlite(ctx)
    return MariaDB(ctx)


__all__ = ["MariaDB", "Sqlite", "database_for", "ServiceStartError"]
