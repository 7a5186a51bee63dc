"""The option search: which [p11_crypto_plugin] block works on this module?

Barbican's options fall into groups that the checks exercise independently:

    key wrapping        key_wrap_mechanism, key_wrap_generate_iv, always_set_cka_sensitive
                        (project KEK generation, C_WrapKey, C_UnwrapKey)
    secret encryption   encryption_mechanism, aes_gcm_generate_iv (C_Encrypt/C_Decrypt)
    HMAC                hmac_mechanism, hmac_key_type, hmac_keygen_mechanism
                        (HMAC key generation, lookup by label, C_Sign/C_Verify)
    concurrency         os_locking_ok (threads opening sessions in parallel)

so the search walks each group on its own, with the groups before it fixed at what passed:
a few dozen combinations at most instead of the ~1000 of the full product. Within a group
the combinations are ordered by likelihood (Barbican's defaults first, then the standard
mechanisms most modules implement, vendor mechanisms last), the first that passes every
check of its group wins, and the rest are not tried. Pruned without a call: a combination
whose mechanism is not in C_GetMechanismList, a pairing Barbican cannot use (an HMAC key
generation mechanism that makes another key type than hmac_key_type, CKM_AES_MAC with a
non-AES key), and, once a mechanism was refused with CKR_MECHANISM_INVALID, every other
combination of the group that needs it.

Every combination evaluated is reported with its result, its CKR_ code (or failure kind),
the requirement it failed and why. The evaluation runs in a child process (a module may
crash on a combination: the crash is that combination's result and the search goes on).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.qualify.fixes import FLAG_MISSING, NOT_LISTED
from harness.qualify.options import MECHANISMS, P11Options, conf_text
from harness.qualify.workers import call_worker, serve

# Which mechanisms a value needs (beyond CKM_AES_KEY_GEN, which Barbican hard-codes).
KEYGEN_MAKES = {"CKM_AES_KEY_GEN": "CKK_AES", "CKM_GENERIC_SECRET_KEY_GEN": "CKK_GENERIC_SECRET",
                "CKM_NC_SHA256_HMAC_KEY_GEN": "CKK_SHA256_HMAC"}
_REFUSED = {"CKR_MECHANISM_INVALID", NOT_LISTED, FLAG_MISSING}


@dataclass
class Attempt:
    group: str
    options: dict[str, Any]
    result: str                        # PASS, FAIL, PRUNED, NOT_TRIED
    error: str | None = None           # CKR_* name or failure kind
    requirement: str | None = None     # the check that failed
    why: str | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The requirement each check method reports (its CheckResult.requirement).
REQUIREMENT_OF = {"check_generate_mkek": "keygen.mkek", "check_generate_pkek": "keygen.pkek",
                  "check_wrap": "keywrap.wrap", "check_unwrap": "keywrap.unwrap",
                  "check_encrypt_decrypt": "encrypt.roundtrip", "check_generate_hmac_key": "keygen.hmac",
                  "check_find_by_label": "objects.find_by_label", "check_hmac": "hmac.sign_verify",
                  "check_concurrency": "sessions.concurrent"}


@dataclass(frozen=True)
class Group:
    name: str
    checks: tuple[str, ...]                   # Qualifier methods (check_*) run per combination
    combos: tuple[dict[str, Any], ...]        # in the order they are tried

    def options(self) -> tuple[str, ...]:
        return tuple(self.combos[0])

    def progress(self, attempt: Attempt) -> int:
        """How far a failed combination got: the number of this group's checks it passed."""
        order = [REQUIREMENT_OF[c] for c in self.checks]
        return order.index(attempt.requirement) if attempt.requirement in order else 0


def _wrap_combos() -> tuple[dict[str, Any], ...]:
    return tuple({"key_wrap_mechanism": m, "key_wrap_generate_iv": iv, "always_set_cka_sensitive": s}
                 for m in ("CKM_AES_CBC_PAD", "CKM_AES_KEY_WRAP_PAD", "CKM_AES_KEY_WRAP_KWP")
                 for iv in (True, False) for s in (True, False))


def _hmac_combos() -> tuple[dict[str, Any], ...]:
    likely = [("CKM_SHA256_HMAC", "CKK_AES", "CKM_AES_KEY_GEN"),           # Barbican's defaults
              ("CKM_SHA256_HMAC", "CKK_GENERIC_SECRET", "CKM_GENERIC_SECRET_KEY_GEN"),
              ("CKM_AES_MAC", "CKK_AES", "CKM_AES_KEY_GEN"),
              ("CKM_SHA256_HMAC", "CKK_SHA256_HMAC", "CKM_NC_SHA256_HMAC_KEY_GEN")]   # Entrust nShield
    rest = [(m, t, g) for m in ("CKM_SHA256_HMAC", "CKM_AES_MAC") for t in KEYGEN_MAKES.values()
            for g in KEYGEN_MAKES if (m, t, g) not in likely]
    return tuple({"hmac_mechanism": m, "hmac_key_type": t, "hmac_keygen_mechanism": g} for m, t, g in likely + rest)


GROUPS = (
    Group("key wrapping", ("check_generate_mkek", "check_generate_pkek", "check_wrap", "check_unwrap"),
          _wrap_combos()),
    Group("secret encryption", ("check_encrypt_decrypt",),
          ({"encryption_mechanism": "CKM_AES_CBC", "aes_gcm_generate_iv": True},
           {"encryption_mechanism": "CKM_AES_GCM", "aes_gcm_generate_iv": True},
           {"encryption_mechanism": "CKM_AES_GCM", "aes_gcm_generate_iv": False},
           {"encryption_mechanism": "VENDOR_SAFENET_CKM_AES_GCM", "aes_gcm_generate_iv": True},
           {"encryption_mechanism": "VENDOR_SAFENET_CKM_AES_GCM", "aes_gcm_generate_iv": False})),
    Group("HMAC of wrapped keys", ("check_generate_hmac_key", "check_find_by_label", "check_hmac"), _hmac_combos()),
    # True first, against Barbican's default: a race that did not show in a short run proves
    # nothing, and a threaded Barbican needs a module that locks; False only if True is refused.
    Group("concurrency", ("check_concurrency",), ({"os_locking_ok": True}, {"os_locking_ok": False})),
)
ENCRYPT_SIZES = (1, 16, 100, 1000)


def mechanisms_needed(combo: dict[str, Any]) -> list[str]:
    return [v for k, v in combo.items() if k.endswith("_mechanism") and v in MECHANISMS]


def static_prune(combo: dict[str, Any], listed: set[str] | None) -> str | None:
    """Why a combination cannot work without trying it (None: try it)."""
    keygen, key_type = combo.get("hmac_keygen_mechanism"), combo.get("hmac_key_type")
    if keygen and KEYGEN_MAKES[keygen] != key_type:
        return f"{keygen} makes {KEYGEN_MAKES[keygen]} keys, not {key_type}: Barbican would not find the HMAC key"
    if combo.get("hmac_mechanism") == "CKM_AES_MAC" and key_type != "CKK_AES":
        return "CKM_AES_MAC signs with AES keys only"
    if listed is not None:
        missing = [m for m in mechanisms_needed(combo) if m not in listed]
        if missing:
            return f"{', '.join(missing)} not in C_GetMechanismList"
    return None


@dataclass
class SearchResult:
    probe: dict[str, Any]
    attempts: list[Attempt] = field(default_factory=list)
    block: dict[str, str] | None = None        # the first block that passed every group
    # With no such block: the passing combinations, and for each unmet group the one that got
    # furthest (the block a run of Barbican can show the failure with)
    closest: dict[str, str] | None = None
    unmet: list[str] = field(default_factory=list)   # groups no combination could meet, with the reason
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"probe": self.probe, "attempts": [a.to_dict() for a in self.attempts], "block": self.block,
                "closest": self.closest, "unmet": self.unmet, "seconds": self.seconds,
                "tried": sum(a.result in ("PASS", "FAIL") for a in self.attempts),
                "pruned": sum(a.result == "PRUNED" for a in self.attempts)}


def search(module: str, token_label: str, pin: str, *, threads: int = 8, iterations: int = 100,
           log: Callable[[str], None] = lambda s: None) -> SearchResult:
    t0 = time.monotonic()
    spec = {"module": module, "token_label": token_label, "pin": pin}
    done = call_worker("harness.qualify.search", "probe", spec, timeout=300, secret=pin)
    probe = done.answer or {"init_error": f"the probe {done.why}"}
    probe["barbican"] = barbican_probe(module, token_label, pin)
    result = SearchResult(probe)
    if probe.get("init_error"):
        result.unmet.append(f"the module: {probe['init_error']}")
        result.seconds = round(time.monotonic() - t0, 1)
        return result
    listed = set(probe["listed"])
    chosen: dict[str, Any] = {}
    closest: dict[str, Any] = {}
    for group in GROUPS:
        attempts = [_first_look(group, combo, listed) for combo in group.combos]
        todo = [i for i, a in enumerate(attempts) if a.result == "NOT_TRIED"]
        while todo:
            spec = {"module": module, "token_label": token_label, "pin": pin, "base": chosen,
                    "checks": list(group.checks), "combos": [attempts[i].options for i in todo],
                    "threads": threads, "iterations": iterations}
            lines: list[dict[str, Any]] = []
            done = call_worker("harness.qualify.search", "evaluate", spec, timeout=900, secret=pin,
                               stream=lambda line: _collect(line, lines))
            for line in lines:
                attempts[todo[line["index"]]].__dict__.update(line["attempt"])
            finished = {todo[line["index"]] for line in lines}
            if done.answer is not None or not todo or all(i in finished for i in todo):
                break
            # the worker died on the combination after the last it reported: that is its result
            crashed = next(i for i in todo if i not in finished)
            kind = f"CRASH({done.signal})" if done.signal else "TIMEOUT" if done.timed_out else "WORKER_EXIT"
            attempts[crashed].__dict__.update(result="FAIL", error=kind, requirement=", ".join(group.checks),
                                              why=done.why)
            todo = [i for i in todo if i not in finished and i != crashed]
        result.attempts += attempts
        passed = next((a for a in attempts if a.result == "PASS"), None)
        tried = [a for a in attempts if a.result == "FAIL"]
        if passed is None:
            reasons = "; ".join(f"{_combo_text(a.options)}: {a.error}" for a in tried[:4]) or "every combination pruned"
            result.unmet.append(f"{group.name}: no combination passed ({reasons})")
            log(f"      {group.name}: no combination passed ({len(tried)} tried)")
            if tried:
                closest.update(max(tried, key=group.progress).options)   # max() keeps the first of equals
            continue
        chosen.update(passed.options)
        log(f"      {group.name}: {_combo_text(passed.options)} passed "
            f"({len(tried)} failed before it, {sum(a.result == 'PRUNED' for a in attempts)} pruned)")
    if not result.unmet:
        result.block = {k: conf_text(v) for k, v in chosen.items()}
    else:
        result.closest = {k: conf_text(v) for k, v in {**chosen, **closest}.items()}
    result.seconds = round(time.monotonic() - t0, 1)
    return result


def _first_look(group: Group, combo: dict[str, Any], listed: set[str]) -> Attempt:
    why = static_prune(combo, listed)
    if why is None:
        return Attempt(group.name, dict(combo), "NOT_TRIED")
    kind = NOT_LISTED if "C_GetMechanismList" in why else "NOT_USABLE"
    return Attempt(group.name, dict(combo), "PRUNED", kind, why=why)


def _collect(line: str, into: list[dict[str, Any]]) -> None:
    if line.startswith('{"index"'):
        try:
            into.append(json.loads(line))
        except ValueError:
            pass


def _combo_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {conf_text(v)}" for k, v in options.items())


# --------------------------------------------------------------------------------------
# The child side
# --------------------------------------------------------------------------------------


def _probe_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """C_Initialize, the token, login and the mechanism list, as the checks need them."""
    from harness.qualify.checks import Qualifier, Target

    q = Qualifier(Target(spec["module"], token_label=spec["token_label"], pin=spec["pin"]), P11Options())
    out: dict[str, Any] = {}
    try:
        out["symbols"] = q.check_symbols().to_dict()
        for check in (q.check_token, q.check_login):
            r = check()
            if not r.passed:
                out["init_error"] = f"[{r.requirement}] {r.detail} ({r.error})"
                return out
        out["listed"] = sorted(n for n, code in MECHANISMS.items() if code in q._mechs())
    finally:
        q.close()
    return out


def _barbican_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Barbican's own PKCS11 class on the module, as a Barbican process starts (C_Initialize,
    slot search, session, login, RNG self-test), then the MKEK generation of
    `barbican-manage hsm gen_mkek` (the key is destroyed again). `library_path` is the module
    itself, or the harness's shim in front of it (P11SHIM_MODULE set by the caller)."""
    from barbican.plugin.crypto import pkcs11 as barbican_pkcs11

    step = "PKCS11() (C_Initialize, token, login, RNG self-test)"
    try:
        p = barbican_pkcs11.PKCS11(library_path=spec["library_path"], login_passphrase=spec["pin"],
                                   token_labels=[spec["token_label"]], encryption_mechanism="CKM_AES_CBC",
                                   hmac_mechanism="CKM_SHA256_HMAC", key_wrap_mechanism="CKM_AES_KEY_WRAP_PAD",
                                   os_locking_ok=True)
        step = "generate_key(CKK_AES, 32, CKM_AES_KEY_GEN, master_key) as gen_mkek"
        session = p.get_session()
        key = p.generate_key("CKK_AES", 32, "CKM_AES_KEY_GEN", session, key_label=f"probe-{spec['tag']}",
                             master_key=True, encrypt=True, wrap=True)
        p.destroy_object(key, session)
        p.return_session(session)
        p.finalize()
    except Exception as exc:  # noqa: BLE001 - whatever Barbican raises is the finding
        text = str(exc).splitlines()[0] if str(exc) else ""
        return {"ok": False, "step": step, "error": f"{type(exc).__name__}: {text}"}
    return {"ok": True, "step": None, "error": None}


def barbican_probe(module: str, token_label: str, pin: str) -> dict[str, Any]:
    """Barbican's own code on the module: given directly as library_path, and through the
    harness's fault shim (which exports every C_* symbol and forwards to the module)."""
    import secrets

    from harness import shim

    out = {}
    for how, library, extra in (("direct", module, {}),
                                ("through the shim", shim.library_path(), shim.env(module))):
        spec = {"library_path": library, "token_label": token_label, "pin": pin, "tag": secrets.token_hex(3)}
        done = call_worker("harness.qualify.search", "barbican", spec, timeout=300, secret=pin, extra_env=extra)
        out[how] = done.answer or {"ok": False, "step": "the worker", "error": done.why}
    return out


def _evaluate_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from harness.qualify.checks import Qualifier, Target

    target = Target(spec["module"], token_label=spec["token_label"], pin=spec["pin"])
    refused: set[str] = set()
    for index, combo in enumerate(spec["combos"]):
        attempt: dict[str, Any]
        gone = [m for m in mechanisms_needed(combo) if m in refused]
        if gone:
            attempt = {"result": "PRUNED", "error": "CKR_MECHANISM_INVALID",
                       "why": f"{', '.join(gone)} already refused with CKR_MECHANISM_INVALID in this group"}
        else:
            t0 = time.monotonic()
            q = Qualifier(target, P11Options.from_mapping({**spec["base"], **combo}, source="search"))
            try:
                results = []
                for name in spec["checks"]:
                    if name == "check_concurrency":
                        results.append(q.check_concurrency(threads=spec["threads"], iterations=spec["iterations"]))
                    elif name == "check_encrypt_decrypt":
                        results.append(q.check_encrypt_decrypt(sizes=ENCRYPT_SIZES))
                    else:
                        results.append(getattr(q, name)())
            finally:
                q.close()
            failed = next((r for r in results if not r.passed), None)
            attempt = {"result": "PASS" if failed is None else "FAIL", "seconds": round(time.monotonic() - t0, 2)}
            if failed is not None:
                attempt.update(error=failed.error, requirement=failed.requirement, why=failed.detail)
                if failed.error in _REFUSED and failed.mechanism:
                    refused.add(failed.mechanism)
        print(json.dumps({"index": index, "attempt": attempt}), flush=True)
        if attempt["result"] == "PASS":
            break
    return {"done": True}


if __name__ == "__main__":
    sys.exit(serve({"probe": _probe_worker, "evaluate": _evaluate_worker, "barbican": _barbican_worker},
                   "harness.qualify.search"))
