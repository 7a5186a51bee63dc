"""What every fault is: a name, typed parameters, the incident it models, inject and heal.

Three steps: `prepare(env)` gathers, *before* anything changes, the facts `heal` needs
(the saved ACL, the original expiration, the token snapshot ...); the engine writes them
to the journal; then `inject(env, undo)` makes the change. So a heal works even after a
crash half-way through an inject, and from another process.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from harness.errors import HarnessError


class FaultError(HarnessError):
    """A fault cannot be injected or healed (wrong target, wrong parameters ...)."""


class Params(BaseModel):
    """Parameters of a fault; subclasses add typed fields. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Fault:
    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    # Which topologies can take it: a backend name, "async_orders", or None for any.
    requires: ClassVar[str | None] = None

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

    def check(self, env) -> None:
        """Raise FaultError when the environment cannot take this fault."""
        req = self.requires
        if req is None:
            return
        topo = env.ctx.topology
        ok = topo.async_orders if req == "async_orders" else req in topo.backends
        if not ok:
            raise FaultError(f"fault '{self.name}' needs a topology with {req}; "
                             f"{topo.name} has backends {topo.backends}")

    def prepare(self, env) -> dict[str, Any]:
        return {}

    def inject(self, env, undo: dict[str, Any]) -> None:
        raise NotImplementedError

    def heal(self, env, undo: dict[str, Any]) -> None:
        raise NotImplementedError


def node_name(env, node: str | int | None) -> str:
    """A node parameter as given on the command line ('2', 'barbican-2') → the node's name."""
    if node is None:
        return env.nodes[0].name
    if isinstance(node, int) or str(node).isdigit():
        return env.node(int(node)).name
    return env.node(str(node)).name
