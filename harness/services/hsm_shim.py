"""Barbican's PKCS#11 library, as the environment wires it: the real module (SoftHSM or a
vendor's) behind the fault shim. With no rule the shim only forwards and counts, so every
pkcs11 environment is ready for HSM faults and reports HSM calls per API operation."""

from __future__ import annotations

from harness import shim
from harness.context import RunContext


class HsmShim:
    def __init__(self, ctx: RunContext, real_module: str):
        self.ctx = ctx
        self.real_module = real_module
        self.control_path = ctx.run_dir / "shim" / "control"
        self.stats_dir = ctx.run_dir / "shim" / "stats"
        # Shared by every process of the environment on the token (SoftHSM only).
        self.store_lock = shim.store_lock_for(real_module, self.control_path)

    @property
    def control(self) -> shim.ShimControl:
        """Rules and statistics of every Barbican process of the environment."""
        return shim.ShimControl(self.control_path, self.stats_dir)

    def check(self) -> None:
        shim.library_path()  # ShimNotBuilt names the fix

    def prepare(self) -> None:
        self.control.clear(settle=False)

    @property
    def library_path(self) -> str:
        return shim.library_path()

    def env(self) -> dict[str, str]:
        return shim.env(self.real_module, self.control_path, self.stats_dir, self.store_lock)
