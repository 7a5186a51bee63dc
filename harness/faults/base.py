"""What every fault is: a name, typed parameters, the incident it models, what it needs
of a target, inject and heal.

What it needs is declared, and checked (`check(traits)`) before anything is journaled:
`capabilities` (harness.target: node control, config write, the HSM shim ...), a
`backend` the target's stores must include, and `needs_worker` (async orders). A
fault reaches the target only through the facets of those capabilities.

Three steps: `prepare(env)` gathers, *before* anything changes, the facts `heal` needs
(the saved ACL, the original expiration, the token snapshot ...); the engine writes them
to the journal; then `inject(env, undo)` makes the change. So a heal works even after a
crash half-way through an inject, and from another process.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from harness.errors import HarnessError
from harness.target import Capability, Traits, traits_of


class FaultError(HarnessError):
    """A fault cannot be injected or healed (wrong target, wrong parameters ...)."""


class Params(BaseModel):
    """Parameters of a fault; subclasses add typed fields. Unknown keys are errors."""

    # `node: 2` in a scenario file means what `--node 2` means: a number is read as its text,
    # then checked like any value (a node outside the topology names the allowed range).
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class Fault:
    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    # What the target must be able to do (every target has the API).
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.API})
    # A secret-store backend the target must have (simple_crypto, pkcs11, kmip), or None.
    backend: ClassVar[str | None] = None
    # Needs barbican-worker and its queue (async orders).
    needs_worker: ClassVar[bool] = False

    def __init__(self, params: Params):
        self.params = params

    @classmethod
    def incident(cls) -> str:
        """First paragraph of the docstring: the real incident this fault models."""
        first = (cls.__doc__ or "").strip().split("\n\n")[0]
        return " ".join(first.split())

    @classmethod
    def parameters(cls) -> dict[str, str]:
        out = {}
        for name, field in cls.Params.model_fields.items():
            default = "required" if field.is_required() else \
                f"default {field.get_default(call_default_factory=True)!r}"
            ann = field.annotation
            text = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
            out[name] = f"{text}, {default}"
        return out

    @classmethod
    def needs(cls) -> list[str]:
        """What it needs, for `fault list`: capabilities, backend, worker."""
        out = sorted(c.value for c in cls.capabilities if c is not Capability.API)
        if cls.backend:
            out.append(f"backend {cls.backend}")
        if cls.needs_worker:
            out.append("async orders (barbican-worker)")
        return out

    def check(self, traits: Traits) -> None:
        """Raise (MissingCapability or FaultError) when the target cannot take this fault.
        Runs before the journal has an entry, so a refusal leaves nothing behind."""
        # What the target is made of first: a capability is moot without the backend.
        if self.backend and self.backend not in traits.backends:
            raise FaultError(f"fault '{self.name}' needs a secret store on backend '{self.backend}'; "
                             f"{traits.name} has backends {list(traits.backends)}")
        if self.needs_worker and not traits.async_orders:
            raise FaultError(f"fault '{self.name}' needs async orders (barbican-worker); "
                             f"{traits.name} has none")
        traits.require(self.capabilities, what=f"fault '{self.name}'")
        for field in ("node",):
            value = getattr(self.params, field, None)
            if value is not None:
                node_in(traits, value)

    # -- what it touches (the fault engine's safety rules on targets it does not own) ----
    def changes_beyond_api(self) -> bool:
        """Anything but API calls (a restart, a config edit, a token change, SQL)."""
        return bool(set(self.capabilities) - {Capability.API})

    def scope(self, traits: Traits) -> list[str]:
        """The nodes it touches: the node it names, every node, or none (API data)."""
        if not set(self.capabilities) - {Capability.API, Capability.DATABASE}:
            return []
        node = getattr(self.params, "node", None)
        return [node_in(traits, node)] if node is not None else list(traits.nodes)

    def refs(self) -> list[str]:
        """The secrets and containers it changes through the API (API-state faults)."""
        return [v for k, v in self.params.model_dump().items() if k in ("ref", "container_ref") and v]

    def prepare(self, env) -> dict[str, Any]:
        return {}

    def inject(self, env, undo: dict[str, Any]) -> None:
        raise NotImplementedError

    def heal(self, env, undo: dict[str, Any]) -> None:
        raise NotImplementedError


def node_in(traits: Traits, node: str | int | None) -> str:
    """A node parameter as given on the command line ('2', 'barbican-2') -> the node's
    name; a node the target does not have is refused with the allowed values."""
    nodes = list(traits.nodes)
    if node is None:
        return nodes[0]
    text = str(node)
    if text.isdigit() and 1 <= int(text) <= len(nodes):
        return nodes[int(text) - 1]
    if text in nodes:
        return text
    raise FaultError(f"node '{text}': {traits.name} has nodes 1-{len(nodes)} ({', '.join(nodes)})")


def node_name(target, node: str | int | None) -> str:
    return node_in(traits_of(target), node)


def kept_configs(env, nodes: list[str]) -> dict[str, Any]:
    """For a config fault's prepare: keep each node's config before it changes (a
    deployment saves the original file); the journal records where and its hash."""
    config = env.facet(Capability.CONFIG_WRITE)
    kept = {n: k for n in nodes if (k := config.keep(n))}
    return {"kept_configs": kept} if kept else {}
