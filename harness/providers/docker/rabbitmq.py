"""RabbitMQ in a container, and its address inside the network."""

from __future__ import annotations

import time

from harness import redact
from harness.providers.docker.network import AMQP_PORT
from harness.providers.docker.service import ContainerService, render_for_container


class DockerRabbit(ContainerService):
    """RabbitMQ with the local provider's files (harness.services.rabbitmq: cookie,
    config, no plugins), AMQP on the network; epmd and distribution inside the container."""

    name = "rabbitmq"
    role = "queue"
    image_name = "rabbitmq"
    port_key, inner_port = "rabbitmq_amqp", AMQP_PORT

    def __init__(self, rt):
        from harness.services.rabbitmq import RabbitMQ

        super().__init__(rt)
        self.local = RabbitMQ(self.ctx)

    def prepare(self) -> None:
        self.local.prepare()
        conf = self.local.dir / "rabbitmq.conf"
        render_for_container(self.ctx, "rabbitmq-broker.conf.j2", conf,
                              must_contain=rf"^listeners\.tcp\.default\s*=\s*(0\.0\.0\.0:)?{AMQP_PORT}\s*$",
                              amqp_port=AMQP_PORT, user="barbican", password=self.ctx.secrets.rabbit_password,
                              log_file=str(self.local.dir / "log" / "rabbit.log"))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in self.local.env().items()
               if k.startswith(("RABBITMQ_", "ERL_")) or k in ("HOME", "LANG")}
        for k in ("ERL_EPMD_PORT", "ERL_EPMD_ADDRESS", "ERL_AFLAGS", "RABBITMQ_DIST_PORT"):
            env.pop(k, None)  # the container has its own network: Erlang's defaults are fine
        return env

    def argv(self) -> list[str]:
        return ["/usr/lib/rabbitmq/bin/rabbitmq-server"]

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self._exited():
                raise self.fail("rabbitmq-server exited")
            try:
                self.local.round_trip(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                return
            except Exception as exc:  # noqa: BLE001 - booting
                last = redact.mask(f"{type(exc).__name__}: {exc}")
            time.sleep(0.3)
        raise self.fail(f"no AMQP round trip within {timeout:.0f} s (last: {last})")

    def consumers(self, queue: str, timeout: float = 5.0) -> int:
        return self.local.consumers(queue, timeout)

    def transport_url(self, port: int | None = None) -> str:
        """The host's view (published port)."""
        return self.local.transport_url()


class RabbitInside:
    def __init__(self, rabbit: DockerRabbit):
        self.rabbit = rabbit

    def transport_url(self, port: int | None = None) -> str:
        from urllib.parse import quote

        password = quote(self.rabbit.ctx.secrets.rabbit_password, safe="")
        host, port = ("proxy", port) if port else ("rabbitmq", AMQP_PORT)
        return f"rabbit://barbican:{password}@{host}:{port}/"
