"""The database in a container (MariaDB) or in the run directory (sqlite), and its
address as Barbican and Keystone reach it inside the network."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from harness.errors import HarnessError
from harness.ports import free_port
from harness.procs import ProcessRecord
from harness.providers.docker.network import DB_PORT, HOST
from harness.providers.docker.service import ContainerService

MARIADB_DATADIR = "/var/lib/harness-mariadb"      # initialised at image build time


class DockerMariaDB(ContainerService):
    name = "mariadb"
    role = "database"
    image_name = "mariadb"
    port_key, inner_port = "mariadb", DB_PORT

    DB_USER = "harness"
    DATABASES = ("keystone", "barbican")

    def __init__(self, rt):
        super().__init__(rt)
        self.ctx.ports.setdefault("mariadb", free_port())

    @property
    def dir(self) -> Path:
        return self.ctx.run_dir / "mariadb"

    def prepare(self) -> None:
        """The harness user and the databases, made by the server itself at start
        (--init-file): no root session needed from outside."""
        self.dir.mkdir(parents=True, exist_ok=True)
        pw = self.ctx.secrets.db_password
        if not re.fullmatch(r"[A-Za-z0-9_-]+", pw):
            raise HarnessError("db_password must be URL-safe base64 characters only")
        lines = [f"CREATE USER IF NOT EXISTS '{self.DB_USER}'@'%' IDENTIFIED BY '{pw}';"]
        for db in self.DATABASES:
            lines += [f"CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET utf8mb4;",
                      f"GRANT ALL PRIVILEGES ON {db}.* TO '{self.DB_USER}'@'%';"]
        fd = os.open(self.dir / "init.sql", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\nFLUSH PRIVILEGES;\n")

    def argv(self) -> list[str]:
        # Same server options as the local provider's MariaDB.
        return ["mariadbd", "--no-defaults", f"--datadir={MARIADB_DATADIR}", "--user=root",
                f"--port={DB_PORT}", "--bind-address=0.0.0.0", "--socket=/run/mysqld/mysqld.sock",
                f"--init-file={self.dir / 'init.sql'}", f"--log-error={self.ctx.logs_dir / 'mariadb-error.log'}",
                "--skip-name-resolve", "--innodb-buffer-pool-size=64M", "--max-connections=500",
                "--character-set-server=utf8mb4", "--innodb-flush-log-at-trx-commit=2",
                "--innodb-log-file-size=16M"]

    def wait_healthy(self, timeout: float = 60.0) -> None:
        import pymysql

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._exited():
                raise self.fail("mariadbd exited")
            try:
                with self.connect("barbican", timeout=2) as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1")
                return
            except pymysql.MySQLError as exc:
                last = exc
                time.sleep(0.2)
        raise self.fail(f"no connection on {HOST}:{self.ctx.ports['mariadb']} within {timeout:.0f} s ({last})")

    # the host's view (tests, faults on the database) ------------------------------------
    def url(self, database: str, port: int | None = None) -> str:
        return (f"mysql+pymysql://{self.DB_USER}:{self.ctx.secrets.db_password}@{HOST}:"
                f"{port or self.ctx.ports['mariadb']}/{database}?charset=utf8mb4")

    def connect(self, database: str, timeout: float = 5.0):
        import pymysql

        return pymysql.connect(host=HOST, port=self.ctx.ports["mariadb"], user=self.DB_USER,
                               password=self.ctx.secrets.db_password, database=database,
                               connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)


class DockerSqlite(ContainerService):
    """sqlite files in the run directory: the same path inside the containers."""

    name = "sqlite"

    def start(self) -> None:
        (self.ctx.run_dir / "sqlite").mkdir(parents=True, exist_ok=True)

    @property
    def processes(self) -> list:
        return []

    def records(self) -> list[ProcessRecord]:
        return []

    def url(self, database: str, port: int | None = None) -> str:
        return f"sqlite:///{self.ctx.run_dir / 'sqlite' / (database + '.db')}"


class DatabaseInside:
    """The database as Barbican and Keystone reach it inside the network."""

    def __init__(self, db):
        self.db = db

    def url(self, database: str, port: int | None = None) -> str:
        if isinstance(self.db, DockerSqlite):
            return self.db.url(database)
        host, port = ("proxy", port) if port else ("mariadb", DB_PORT)
        return (f"mysql+pymysql://{DockerMariaDB.DB_USER}:{self.db.ctx.secrets.db_password}@{host}:{port}/"
                f"{database}?charset=utf8mb4")
