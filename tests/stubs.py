"""Stand-ins for unit tests of pure logic only (the fault engine's bookkeeping, the
timeline's clock): a target that has capabilities and a run directory, and runs nothing."""

from __future__ import annotations

from harness.target import Capability, Facets


class StubTarget:
    def __init__(self, run_dir, capabilities=(Capability.API,), nodes=("barbican-1",), backends=()):
        self.run_dir, self.name = run_dir, "stub"
        self._facets = Facets(self.name, {c: None for c in capabilities if c is not Capability.API})
        self.nodes = [type("Node", (), {"name": n})() for n in nodes]
        self.backends, self.async_orders = list(backends), False
        self.actions: list[tuple[str, float]] = []  # what test faults record
        self.foreign = False

    @property
    def capabilities(self):
        return self._facets.capabilities

    def facet(self, capability, what="this"):
        return self._facets.get(capability, what)
