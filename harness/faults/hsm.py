"""HSM incidents: through the PKCS#11 fault shim (latency, CKR_ errors) or on the token.

Shim rules apply to every process that loads the module through the shim: all API nodes
and barbican-manage share one HSM, as in production."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from typing import Any, Literal

from pydantic import Field

from harness import shim
from harness.faults.base import Fault, FaultError, Params, node_name


class _ShimFault(Fault):
    requires = "pkcs11"

    def check(self, env) -> None:
        super().check(env)
        if env.provider.shim is None:
            raise FaultError(f"fault '{self.name}' needs hsm.shim: true in the topology")

    def rules(self) -> list[shim.Rule]:
        raise NotImplementedError

    def prepare(self, env) -> dict[str, Any]:
        # Rules already set (another fault) are restored on heal.
        return {"previous": [r.to_line() for r in env.provider.shim.control.rules()]}

    def inject(self, env, undo: dict[str, Any]) -> None:
        control = env.provider.shim.control
        control.set_rules(self.rules() + [shim.Rule.parse(line) for line in undo["previous"]])

    def heal(self, env, undo: dict[str, Any]) -> None:
        env.provider.shim.control.set_rules([shim.Rule.parse(line) for line in undo["previous"]])


class LatencyParams(Params):
    functions: list[str] = Field(default_factory=lambda: ["*"])
    ms: float = Field(500, ge=0)
    jitter: float = Field(0, ge=0)
    # Seed of the jitter draws (a scenario fills in its rng_seed): the same run replays.
    seed: int | None = None


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


class HsmError(_ShimFault):
    """HSM errors: a PKCS#11 function returns a CKR_ code (device errors, a flapping HSM).

    Barbican logs "Reinitializing PKCS#11 library: HSM returned response code: 0x.. CKR_...",
    re-initialises and retries once: a single error is absorbed (the request succeeds),
    a persistent one becomes 500 "... failure seen - please contact site administrator."""

    name = "hsm_error"
    Params = ErrorParams

    def rules(self):
        p = self.params
        return [shim.Rule(fn=p.function, rv=p.code, probability=p.probability, count=p.count, seed=p.seed)]

    def heal(self, env, undo: dict[str, Any]) -> None:
        super().heal(env, undo)
        if self.params.restart_nodes_on_heal:
            for node in env.nodes:
                env.provider.restart_node(node.name, None)


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
    requires = "pkcs11"

    def prepare(self, env) -> dict[str, Any]:
        undo: dict[str, Any] = {"node": node_name(env, self.params.node)}
        if self.params.mode == "relogin":
            undo["previous"] = [r.to_line() for r in env.provider.shim.control.rules()]
        return undo

    def inject(self, env, undo: dict[str, Any]) -> None:
        if self.params.mode == "restart":
            pin = env.ctx.secrets.hsm_pin
            wrong = str((int(pin) + 1) % 10**len(pin)).zfill(len(pin))
            env.provider.restart_node(undo["node"], {"p11": {"login": wrong}})
            return
        # Re-login happens when Barbican re-initialises the library after an error: one
        # device error forces it, then every C_Login fails with the PIN code.
        env.provider.shim.control.set_rules([
            shim.Rule(fn="C_Login", rv=self.params.code),
            shim.Rule(fn="C_OpenSession", rv="CKR_DEVICE_ERROR", count=1),
        ])

    def heal(self, env, undo: dict[str, Any]) -> None:
        if self.params.mode == "restart":
            env.provider.restart_node(undo["node"], {})
        else:
            env.provider.shim.control.set_rules([shim.Rule.parse(line) for line in undo["previous"]])
            # The library is left finalised after the failed login; a restart brings a
            # fresh login (what an operator does once the PIN is fixed).
            for node in env.nodes:
                env.provider.restart_node(node.name, None)


class KeyDeletedParams(Params):
    key: Literal["mkek", "hmac"] = "mkek"
    expire: Literal["restart", "ttl"] = "restart"


_DELETE_KEY = """
import os, sys, pkcs11
from pkcs11 import ObjectClass
lib = pkcs11.lib(sys.argv[1])
token = lib.get_token(token_label=sys.argv[2])
with token.open(user_pin=os.environ["HARNESS_HSM_PIN"], rw=True) as s:
    objs = list(s.get_objects({pkcs11.Attribute.CLASS: ObjectClass.SECRET_KEY,
                               pkcs11.Attribute.LABEL: sys.argv[3]}))
    if not objs:
        sys.exit("no key labelled " + sys.argv[3])
    for o in objs:
        o.destroy()
"""


class HsmKeyDeleted(Fault):
    """MKEK or HMAC key deleted from the HSM token.

    Dangerous because it is silent: Barbican keeps serving from its pKEK cache
    (pkek_cache_ttl, 900 s by default) and fails only when the cache expires or the node
    restarts (CKR_UNWRAPPING_KEY_HANDLE_INVALID, then "Could not find key labeled ...").
    `expire` chooses how that moment comes: restart the nodes now, or wait out the TTL.
    Heal restores the token from the snapshot taken at inject time."""

    name = "hsm_key_deleted"
    Params = KeyDeletedParams
    requires = "pkcs11"

    def prepare(self, env) -> dict[str, Any]:
        softhsm = env.provider.softhsm
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        snapshot = env.run_dir / "faults" / f"token-snapshot-{stamp}"
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(softhsm.tokens_dir, snapshot)
        return {"snapshot": str(snapshot), "nodes": [n.name for n in env.nodes]}

    def inject(self, env, undo: dict[str, Any]) -> None:
        softhsm = env.provider.softhsm
        hsm = env.ctx.topology.hsm
        label = hsm.mkek_label if self.params.key == "mkek" else hsm.hmac_label
        proc = subprocess.run(
            [sys.executable, "-c", _DELETE_KEY, softhsm.library, hsm.token_label, label],
            env=env.ctx.environ(HARNESS_HSM_PIN=env.ctx.secrets.hsm_pin, **softhsm.env()),
            capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise FaultError(f"could not delete '{label}' from the token: {proc.stderr.strip()[-300:]}")
        if self.params.expire == "restart":
            for node in undo["nodes"]:
                env.provider.restart_node(node, None)

    def heal(self, env, undo: dict[str, Any]) -> None:
        tokens = env.provider.softhsm.tokens_dir
        # SoftHSM must not have the token open while its files are replaced.
        for node in undo["nodes"]:
            env.provider.node(node).stop()
        shutil.rmtree(tokens)
        shutil.copytree(undo["snapshot"], tokens)
        for node in undo["nodes"]:
            env.provider.restart_node(node, None)
