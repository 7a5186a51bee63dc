"""The message broker behind Barbican's async orders: a private RabbitMQ per environment.

Everything lives under <run_dir>/rabbitmq/ and listens on 127.0.0.1 only, on ports picked
at run time: AMQP, epmd and the Erlang distribution port (never 5672/4369/25672), so any
number of environments run side by side and none touches a system broker.

Why we run epmd ourselves: Erlang starts epmd on demand as a daemon that outlives the
broker (and would hold the port forever). Instead epmd runs in the foreground as its own
managed process, started before the broker, and every Erlang VM of the environment gets
`-start_epmd false` so none of them starts another one. `stop()` stops the broker first,
then epmd, each by process group; nothing is left behind.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import string
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import amqp
import amqp.exceptions

from harness import redact
from harness.ports import free_port
from harness.services.base import Service, require_binary

USER = "barbican"
# Debian's /usr/sbin/rabbitmq-server is a wrapper that switches to the rabbitmq user and
# to /var/lib/rabbitmq; the script it wraps runs the broker as we are, where we say.
SERVER_SCRIPT = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class RabbitMQ(Service):
    name = "rabbitmq"

    def check(self) -> None:
        self.server = require_binary("rabbitmq-server", "rabbitmq-server", (SERVER_SCRIPT,))
        # Both come with the broker's dependencies; checked so a broken install is named.
        self.epmd = require_binary("epmd", "erlang-base")
        require_binary("erl", "erlang-base")

    # -- layout ---------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return self.ctx.run_dir / "rabbitmq"

    @property
    def nodename(self) -> str:
        # Derived from the run id (not random) so a restarted broker finds its own
        # database again (the mnesia directory is named after the node).
        safe = re.sub(r"[^A-Za-z0-9_-]", "-", self.ctx.run_id)[:200]
        return f"rabbit-{safe}@localhost"

    def env(self) -> dict[str, str]:
        """The broker's environment (and epmd's): every file, port and name it uses. The
        docker provider's broker container takes the same, less what its own network
        makes unnecessary."""
        d = self.dir
        ports = self.ctx.ports
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_")) and k != "NOTIFY_SOCKET"}
        env.update({
            # The VM reads ~/.erlang.cookie: a private HOME makes the cookie ours alone.
            "HOME": str(d / "home"),
            "PATH": env.get("PATH") or "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",  # Erlang takes its file-name encoding from the locale
            "ERL_EPMD_PORT": str(ports["rabbitmq_epmd"]),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Prepended to every `erl` of this environment, including the one-off VM the
            # broker runs at boot to "ensure epmd": our epmd is the only one.
            "ERL_AFLAGS": "-start_epmd false",
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_DIST_PORT": str(ports["rabbitmq_dist"]),
            # Keep the distribution listener on loopback (default: all interfaces).
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            # Every file the broker reads or writes is ours; nothing from /etc/rabbitmq.
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_CONFIG_FILES": str(d / "conf.d" / "*.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MOTD_FILE": str(d / "motd"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "ERL_CRASH_DUMP": str(d / "log" / "erl_crash.dump"),
        })
        return env

    # -- lifecycle ------------------------------------------------------------------------
    def prepare(self) -> None:
        d = self.dir
        for sub in ("home", "mnesia", "log", "conf.d"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.ctx.ports.setdefault("rabbitmq_amqp", free_port())
        self.ctx.ports.setdefault("rabbitmq_dist", free_port())
        self.ctx.ports.setdefault("rabbitmq_epmd", _free_port_on_both_loopbacks())

        password = self.ctx.secrets.rabbit_password
        # The config format has no quoting; our generator only makes URL-safe passwords.
        if not re.fullmatch(r"[A-Za-z0-9_-]+", password):
            raise self.fail("rabbit_password must be URL-safe base64 characters only")

        cookie = d / "home" / ".erlang.cookie"
        if not cookie.exists():  # kept on re-prepare: a running node would refuse a new one
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as f:
                f.write("".join(secrets.choice(string.ascii_uppercase) for _ in range(32)))
        redact.register(cookie.read_text())

        # An empty list, not an empty file (that one is a parse error): no plugin at all.
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("# empty: the harness sets the environment\n")
        self.ctx.render("rabbitmq-broker.conf.j2", d / "rabbitmq.conf",
                        amqp_port=self.ctx.ports["rabbitmq_amqp"], user=USER, password=password,
                        log_file=str(d / "log" / "rabbit.log"))

    def start(self) -> None:
        epmd_port = self.ctx.ports["rabbitmq_epmd"]
        env = self.env()
        # Foreground (no -daemon): it stays our child, in its own process group.
        self.spawn([self.epmd, "-port", str(epmd_port), "-address", "127.0.0.1"],
                   env=env, ports=[epmd_port], name="rabbitmq-epmd")
        deadline = time.monotonic() + 10
        while not _epmd_answers(epmd_port):
            if not self.processes[-1].alive():
                raise self.fail(f"epmd exited with {self.processes[-1].popen.returncode}")
            if time.monotonic() > deadline:
                raise self.fail(f"epmd did not answer on 127.0.0.1:{epmd_port} within 10 s")
            time.sleep(0.05)
        amqp_port = self.ctx.ports["rabbitmq_amqp"]
        self.spawn([self.server], env=env, cwd=self.dir,
                   ports=[amqp_port, self.ctx.ports["rabbitmq_dist"]])

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Healthy = our user logs in over AMQP and a message makes a round trip."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for proc in self.processes:
                if not proc.alive():
                    # The start script exits 0 whatever happened; the cause is in the first
                    # error lines, far above the crash report the log tail shows.
                    raise self.fail(f"process {proc.name} exited with {proc.popen.returncode}"
                                    f"{self._first_errors(proc.log_path)}")
            try:
                self.round_trip(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                return
            except (OSError, amqp.exceptions.AMQPError, RuntimeError) as exc:
                # Refused, reset or login refused while the broker boots: retry until deadline.
                last = redact.mask(f"{type(exc).__name__}: {exc}")
            time.sleep(0.2)
        raise self.fail(f"no AMQP round trip on 127.0.0.1:{self.ctx.ports['rabbitmq_amqp']} "
                        f"within {timeout:.0f} s (last: {last})")

    @staticmethod
    def _first_errors(log: Path, lines: int = 6) -> str:
        try:
            text = log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        first = next((i for i, line in enumerate(text) if "[error]" in line), None)
        if first is None:
            return ""
        return "; first errors:\n" + redact.mask("\n".join(text[first:first + lines]))

    def _connection(self, timeout: float) -> amqp.Connection:
        return amqp.Connection(
            host=f"127.0.0.1:{self.ctx.ports['rabbitmq_amqp']}", userid=USER,
            password=self.ctx.secrets.rabbit_password, virtual_host="/",
            connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)

    def consumers(self, queue: str, timeout: float = 5.0) -> int:
        """How many consumers a queue has (0 if it does not exist yet)."""
        conn = self._connection(timeout)
        try:
            conn.connect()
            try:
                _, _, count = conn.channel().queue_declare(queue, passive=True)
            except amqp.exceptions.NotFound:
                return 0
            return count
        finally:
            try:
                conn.close()
            except Exception:  # the channel error may have closed it already
                conn.collect()

    def round_trip(self, timeout: float = 5.0) -> None:
        """Publish to a private queue and read it back; every socket call has a timeout."""
        conn = self._connection(timeout)
        try:
            conn.connect()
            ch = conn.channel()
            queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=True)
            body = uuid.uuid4().hex
            ch.basic_publish(amqp.Message(body), exchange="", routing_key=queue)
            give_up = time.monotonic() + timeout
            while True:
                msg = ch.basic_get(queue, no_ack=True)
                if msg is not None:
                    if msg.body != body:
                        raise RuntimeError("round trip returned a different message")
                    return
                if time.monotonic() > give_up:
                    raise TimeoutError(f"published message not delivered within {timeout:.0f} s")
                time.sleep(0.05)
        finally:
            try:
                conn.close()
            except Exception:  # already broken; the socket is closed either way
                conn.collect()

    def transport_url(self, port: int | None = None) -> str:
        """For Barbican's `[DEFAULT] transport_url` (oslo.messaging); `port` to go
        through the fault proxy."""
        password = quote(self.ctx.secrets.rabbit_password, safe="")
        return f"rabbit://{USER}:{password}@127.0.0.1:{port or self.ctx.ports['rabbitmq_amqp']}/"


def _epmd_answers(port: int) -> bool:
    """A NAMES_REQ to epmd (not just a TCP connect, which epmd logs as a broken packet)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(1)
            s.sendall(b"\x00\x01n")  # 2-byte length, then 'n' = NAMES_REQ
            return len(s.recv(4)) == 4  # epmd answers with its own port number first
    except OSError:
        return False


def _free_port_on_both_loopbacks() -> int:
    """epmd always listens on ::1 as well as on the address it is given (it has no option
    against it), and exits "already running" if ::1:port is taken: so the port must be
    free on both loopbacks."""
    for _ in range(20):
        port = free_port()
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("::1", port))
            return port
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL or exc.errno == errno.EAFNOSUPPORT:
                return port  # no IPv6 on this machine: epmd skips ::1 too
    raise RuntimeError("could not find a port free on both 127.0.0.1 and ::1")
