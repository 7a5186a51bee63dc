"""Network incidents on the links Barbican depends on, through the fault proxy
(Toxiproxy API: our embedded server, or a real Toxiproxy named by TOXIPROXY_URL)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from harness.faults.base import Fault, FaultError, Params
from harness.target import Capability, Traits

LINKS = Capability.NETWORK_LINKS


class _LinkFault(Fault):
    link: ClassVar[str]
    capabilities = frozenset({Capability.API, LINKS})

    def check(self, traits: Traits) -> None:
        super().check(traits)
        if self.link not in traits.links:
            raise FaultError(f"fault '{self.name}' needs the '{self.link}' link; "
                             f"{traits.name} has links {list(traits.links)}")


class _LinkDown(_LinkFault):
    def inject(self, env, undo: dict[str, Any]) -> None:
        env.facet(LINKS).get(self.link).disable()

    def heal(self, env, undo: dict[str, Any]) -> None:
        env.facet(LINKS).get(self.link).enable()


class KeystoneOutage(_LinkDown):
    """Keystone down for Barbican: tokens a node has already validated keep working from
    its cache (up to 300 s); a new token gets 503 "The Keystone service is temporarily
    unavailable." after ~3.5 s of retries."""

    name = "keystone_outage"
    link = "keystone"


class DbOutage(_LinkDown):
    """Database unreachable: every request that needs the DB fails with 500 and
    DBConnectionError in the log; nothing is lost once the link returns."""

    name = "db_outage"
    link = "db"


class KmipOutage(_LinkDown):
    """KMIP server unreachable: secrets in the KMIP store cannot be stored or read (500)."""

    name = "kmip_outage"
    link = "kmip"
    backend = "kmip"


class QueueOutage(_LinkDown):
    """Message queue unreachable (async orders): POST /orders hangs while oslo.messaging
    retries; orders stay PENDING. Every client call needs a timeout."""

    name = "queue_outage"
    link = "queue"
    needs_worker = True


class LatencyParams(Params):
    ms: int = Field(500, ge=0)
    jitter: int = Field(0, ge=0)


class _LinkLatency(_LinkFault):
    Params = LatencyParams

    def inject(self, env, undo: dict[str, Any]) -> None:
        env.facet(LINKS).get(self.link).add_toxic(
            type="latency", name=f"{self.name}", stream="downstream",
            attributes={"latency": self.params.ms, "jitter": self.params.jitter})

    def heal(self, env, undo: dict[str, Any]) -> None:
        proxy = env.facet(LINKS).get(self.link)
        if self.name in proxy.toxics():
            proxy.destroy_toxic(self.name)


class KeystoneLatency(_LinkLatency):
    """Slow Keystone: every token validation Barbican makes waits `ms` longer."""

    name = "keystone_latency"
    link = "keystone"


class DbLatency(_LinkLatency):
    """Slow database: every query from Barbican waits `ms` longer per round trip."""

    name = "db_latency"
    link = "db"
