"""HSM incidents: through the PKCS#11 fault shim (latency, CKR_ errors) or on the token.

Shim rules apply to every process that loads the module through the shim: all API nodes
and barbican-manage share one HSM, as in production."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from harness import shim
from harness.faults.base import Fault, Params, kept_configs, node_name
from harness.target import Capability

SHIM = Capability.HSM_SHIM
CONFIG = Capability.CONFIG_WRITE
NODES = Capability.NODE_CONTROL
TOKEN = Capability.HSM_TOKEN


class _ShimFault(Fault):
    capabilities = frozenset({Capability.API, SHIM})
    backend = "pkcs11"

    def rules(self) -> list[shim.Rule]:
        raise NotImplementedError

    def prepare(self, env) -> dict[str, Any]:
        # Rules already set (another fault) are restored on heal.
        return {"previous": [r.to_line() for r in env.facet(SHIM).rules()]}

    def inject(self, env, undo: dict[str, Any]) -> None:
        env.facet(SHIM).set_rules(self.rules() + [shim.Rule.parse(line) for line in undo["previous"]])

    def heal(self, env, undo: dict[str, Any]) -> None:
        env.facet(SHIM).set_rules([shim.Rule.parse(line) for line in undo["previous"]])


def _known_function(name: str) -> str:
    """A function the shim can fault (its own table, harness.shim.FAULTABLE) or '*': any
    other name would be a rule that never matches, a silent no-op fault."""
    if name != "*" and name not in shim.FAULTABLE:
        raise ValueError(f"'{name}' is not a PKCS#11 function the shim knows; allowed: '*' or one of "
                         f"{', '.join(f for f in shim.FUNCTIONS if f in shim.FAULTABLE)}")
    return name


class LatencyParams(Params):
    functions: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    ms: float = Field(500, ge=0)
    jitter: float = Field(0, ge=0)
    # Seed of the jitter draws (a scenario fills in its rng_seed): the same run replays.
    seed: int | None = None

    @field_validator("functions")
    @classmethod
    def _known_functions(cls, value: list[str]) -> list[str]:
        return [_known_function(name) for name in value]


class HsmLatency(_ShimFault):
    """HSM latency: every PKCS#11 call (or the named ones) takes `ms` ± `jitter` longer,
    as with an overloaded network HSM. Requests slow down; nothing should fail."""

    name = "hsm_latency"
    Params = LatencyParams

    def rules(self):
        return [shim.Rule(fn=fn, delay_ms=self.params.ms, jitter_ms=self.params.jitter, seed=self.params.seed)
                for fn in self.params.functions]


class ErrorParams(Params):
    function: str = "C_Decrypt"
    code: str = "CKR_DEVICE_ERROR"
    probability: float = Field(1.0, ge=0, le=1)
    count: int | None = Field(None, ge=1)
    # Seed of the probability draws (a scenario fills in its rng_seed).
    seed: int | None = None
    # What an operator does after an HSM outage. Needed with Barbican 23: concurrent
    # requests re-initialising the library at once can leave a node with no PKCS#11
    # session ("TypeError: an integer is required" on every request) until it restarts.
    restart_nodes_on_heal: bool = False

    @field_validator("function")
    @classmethod
    def _known_function(cls, value: str) -> str:
        return _known_function(value)

    @field_validator("code")
    @classmethod
    def _known_code(cls, value: str) -> str:
        try:
            shim.rv_value(value)  # a vendor's code may be given as a number (0x80000001)
        except ValueError:
            raise ValueError(f"'{value}' is not a CK_RV the shim knows; allowed: a number (e.g. 0x80000001) "
                             f"or one of {', '.join(shim.CKR)}") from None
        return value


class HsmError(_ShimFault):
    """HSM errors: a PKCS#11 function returns a CKR_ code (device errors, a flapping HSM).

    Barbican logs "Reinitializing PKCS#11 library: HSM returned response code: 0x.. CKR_...",
    re-initialises and retries once: a single error is absorbed (the request succeeds),
    a persistent one becomes 500 "... failure seen - please contact site administrator."""

    name = "hsm_error"
    Params = ErrorParams

    def check(self, traits) -> None:
        super().check(traits)
        if self.params.restart_nodes_on_heal:
            traits.require([NODES], what="hsm_error with restart_nodes_on_heal")

    def rules(self):
        p = self.params
        return [shim.Rule(fn=p.function, rv=p.code, probability=p.probability, count=p.count, seed=p.seed)]

    def heal(self, env, undo: dict[str, Any]) -> None:
        super().heal(env, undo)
        if self.params.restart_nodes_on_heal:
            for node in env.nodes:
                env.facet(NODES).restart(node.name)


class HsmTokenAbsent(_ShimFault):
    """HSM token absent: the token disappears (pulled card, network HSM partition gone):
    session and token calls return CKR_TOKEN_NOT_PRESENT until it is back."""

    name = "hsm_token_absent"

    def rules(self):
        return [shim.Rule(fn=fn, rv="CKR_TOKEN_NOT_PRESENT")
                for fn in ("C_OpenSession", "C_GetTokenInfo", "C_Login")]


class SessionParams(Params):
    probability: float = Field(1.0, ge=0, le=1)


class HsmSessionExhaustion(_ShimFault):
    """HSM session exhaustion: C_OpenSession returns CKR_SESSION_COUNT (the HSM's session
    limit; Barbican opens a session per operation), causing reinit storms and 500s."""

    name = "hsm_session_exhaustion"
    Params = SessionParams

    def rules(self):
        return [shim.Rule(fn="C_OpenSession", rv="CKR_SESSION_COUNT", probability=self.params.probability)]


class PinParams(Params):
    node: str = "1"
    mode: Literal["restart", "relogin"] = "restart"
    code: Literal["CKR_PIN_INCORRECT", "CKR_PIN_LOCKED"] = "CKR_PIN_INCORRECT"


class HsmWrongPin(Fault):
    """Wrong HSM PIN: a node restarted with a wrong PIN (restart mode: it starts, health
    and metadata reads stay 200, every crypto request is 500 with CKR_PIN_INCORRECT in the
    log), or C_Login failing at re-login (relogin mode, through the shim: CKR_PIN_INCORRECT
    or CKR_PIN_LOCKED; SoftHSM never locks a PIN by itself)."""

    name = "hsm_wrong_pin"
    Params = PinParams
    backend = "pkcs11"
    # restart mode: a config change on one node; relogin mode needs more (see check).
    capabilities = frozenset({Capability.API, CONFIG})

    def check(self, traits) -> None:
        super().check(traits)
        if self.params.mode == "relogin":
            # The shim fails the logins; healing restarts every node.
            traits.require([SHIM, NODES], what="hsm_wrong_pin mode=relogin")

    def prepare(self, env) -> dict[str, Any]:
        undo: dict[str, Any] = {"node": node_name(env, self.params.node)}
        if self.params.mode == "relogin":
            undo["previous"] = [r.to_line() for r in env.facet(SHIM).rules()]
        else:
            undo.update(kept_configs(env, [undo["node"]]))
        return undo

    def inject(self, env, undo: dict[str, Any]) -> None:
        if self.params.mode == "restart":
            # PIN + 1 (same length) is never the PIN; it goes only into the node's 0600 config.
            pin = env.ctx.secrets.hsm_pin
            wrong = str((int(pin) + 1) % 10**len(pin)).zfill(len(pin))
            env.facet(CONFIG).restart_with(undo["node"], {"p11": {"login": wrong}})
            return
        # Re-login happens when Barbican re-initialises the library after an error: one
        # device error forces it, then every C_Login fails with the PIN code.
        env.facet(SHIM).set_rules([
            shim.Rule(fn="C_Login", rv=self.params.code),
            shim.Rule(fn="C_OpenSession", rv="CKR_DEVICE_ERROR", count=1),
        ])

    def heal(self, env, undo: dict[str, Any]) -> None:
        if self.params.mode == "restart":
            env.facet(CONFIG).restart_with(undo["node"], {})
        else:
            env.facet(SHIM).set_rules([shim.Rule.parse(line) for line in undo["previous"]])
            # The library is left finalised after the failed login; a restart brings a
            # fresh login (what an operator does once the PIN is fixed).
            for node in env.nodes:
                env.facet(NODES).restart(node.name)


class KeyDeletedParams(Params):
    key: Literal["mkek", "hmac"] = "mkek"
    expire: Literal["restart", "ttl"] = "restart"


class HsmKeyDeleted(Fault):
    """MKEK or HMAC key deleted from the HSM token.

    Dangerous because it is silent: Barbican keeps serving from its pKEK cache
    (pkek_cache_ttl, 900 s by default) and fails only when the cache expires or the node
    restarts (CKR_UNWRAPPING_KEY_HANDLE_INVALID, then "Could not find key labeled ...").
    `expire` chooses how that moment comes: restart the nodes now, or wait out the TTL.
    Heal restores the token from the snapshot taken at inject time."""

    name = "hsm_key_deleted"
    Params = KeyDeletedParams
    capabilities = frozenset({Capability.API, TOKEN, NODES})
    backend = "pkcs11"

    def prepare(self, env) -> dict[str, Any]:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        snapshot = env.run_dir / "faults" / f"token-snapshot-{stamp}"
        env.facet(TOKEN).snapshot(snapshot)
        return {"snapshot": str(snapshot), "nodes": [n.name for n in env.nodes]}

    def inject(self, env, undo: dict[str, Any]) -> None:
        token = env.facet(TOKEN)
        token.delete_key(token.mkek_label if self.params.key == "mkek" else token.hmac_label)
        if self.params.expire == "restart":
            for node in undo["nodes"]:
                env.facet(NODES).restart(node)

    def heal(self, env, undo: dict[str, Any]) -> None:
        # The token must not be open while its files are replaced.
        for node in undo["nodes"]:
            env.facet(NODES).stop(node)
        env.facet(TOKEN).restore(Path(undo["snapshot"]))
        for node in undo["nodes"]:
            env.facet(NODES).restart(node)
