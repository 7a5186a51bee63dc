"""The backend checks: will Barbican's p11_crypto plugin work on this PKCS#11 module with
these [p11_crypto_plugin] options?

Every check replays, with python-pkcs11 and in a process separate from Barbican, a call
Barbican makes (barbican/plugin/crypto/pkcs11.py and p11_crypto.py, Barbican 23.0.0), with
the mechanism, parameters and attribute template Barbican uses for the given options. Each
check returns a `CheckResult`; a failed result names the barbican.conf option at fault and,
when one is known, the fix (harness.qualify.fixes.KNOWN_ISSUES).

The concurrency check runs in a child process: a module used from several threads
without locking can crash the process (measured on SoftHSM 2.6.1 with os_locking_ok =
False: SIGSEGV, SIGABRT or CKR_GENERAL_ERROR).

Secrets: the PIN is held in memory only, never logged, never put in a result or argv.
Objects the checks create carry a per-run label prefix and are destroyed by `close()`.
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Self

from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass
from pkcs11.constants import DEFAULT
from pkcs11.exceptions import PKCS11Error
from pkcs11.mechanisms import GCMParams

from harness.qualify.fixes import (
    ATTRIBUTE_IGNORED,
    CONCURRENCY,
    FLAG_MISSING,
    HARD_CODED_HINT,
    INVALID_VALUE,
    KEY_NOT_FOUND,
    KEY_SIZE,
    MISMATCH,
    MISSING_SYMBOL,
    NO_HSM_IV,
    NO_TOKEN,
    NOT_LISTED,
    find_known_issue,
    generic_hint,
)
from harness.qualify.module import (
    CKR_USER_ALREADY_LOGGED_IN,
    SESSION_STATES,
    RawModule,
    ckr_name,
    gcm_params_raw,
    load_library,
    mechanism_of,
    rv_name,
)
from harness.qualify.options import (
    BARBICAN_CALLS,
    CBC_IV_BYTES,
    FLAG_BITS,
    GCM_NONCE_BYTES,
    GCM_TAG_BYTES,
    HMAC_KEY_BYTES,
    HMAC_SIGNATURE_BUFFER,
    KEY_TYPES,
    KEY_WRAP_IV_BYTES,
    KNOWN_FLAG_MASK,
    MECHANISMS,
    RNG_SELF_TEST_BYTES,
    SECRET_OPTIONS,
    SEED_CALL,
    MechanismRequirement,
    P11Options,
    required_mechanisms,
)
from harness.qualify.workers import call_worker, serve

# --------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    requirement: str                  # e.g. "keywrap.wrap"
    passed: bool
    detail: str
    option: str | None = None         # the barbican.conf option to change
    value: str | None = None          # its value in this run
    hint: str | None = None           # the known (or best) fix
    mechanism: str | None = None
    call: str | None = None           # the PKCS#11 call(s) exercised
    error: str | None = None          # CKR_* name or failure kind

    def message(self) -> str:
        if self.passed:
            return f"[{self.requirement}] ok: {self.detail}"
        head = f"{self.option} = {self.value}: " if self.option else ""
        tail = f"; {self.hint}" if self.hint else ""
        return f"[{self.requirement}] {head}{self.detail}{tail}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)




class _Failure(Exception):
    """A check step failed for a reason other than a CKR_* code."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class _Blocked(Exception):
    """A prerequisite failed; the check cannot be exercised. `error` is the root cause's
    CKR_* name or failure kind, so the known fix for the root cause is still offered."""

    def __init__(self, message: str, error: str | None = None, step: str | None = None):
        super().__init__(message)
        self.error = error
        self.step = step


# The options in play when a prerequisite step fails (used for checks it blocks).
_STEP_OPTIONS: dict[str, tuple[str, ...]] = {
    "token.found": ("token_labels", "token_serial_number"),
    "session.login": ("login",),
    "keygen.mkek": ("mkek_length",),
    "keygen.hmac": ("hmac_keygen_mechanism", "hmac_key_type"),
    "keygen.pkek": ("always_set_cka_sensitive", "pkek_length"),
    "keywrap.wrap": ("key_wrap_mechanism", "key_wrap_generate_iv", "always_set_cka_sensitive"),
    "encrypt.roundtrip": ("encryption_mechanism", "aes_gcm_generate_iv"),
}



@dataclass
class Target:
    module: str
    token_label: str | None = None
    token_serial: str | None = None
    pin: str | None = field(default=None, repr=False)


# --------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------

_CBC_SIZES = (1, 15, 16, 32, 100, 1000, 10240)


def _pkcs7_pad(data: bytes, block: int = 16) -> bytes:
    n = block - len(data) % block
    return data + bytes([n]) * n


def _pkcs7_unpad(data: bytes, block: int = 16) -> bytes:
    if not data or len(data) % block:
        raise _Failure(MISMATCH, f"decrypted data is {len(data)} bytes, not a multiple of {block}")
    n = data[-1]
    if not 1 <= n <= block or data[-n:] != bytes([n]) * n:
        raise _Failure(MISMATCH, "decrypted data does not end in valid PKCS#7 padding")
    return data[:-n]


class Qualifier:
    """Runs the checks against one token. Not thread-safe (the concurrency check makes its
    own sessions in a child process). Call `close()` to destroy what the checks created."""

    def __init__(self, target: Target, options: P11Options | None = None, run_id: str | None = None):
        self.target = target
        self.opts = options or P11Options()
        self.run_id = run_id or secrets.token_hex(4)
        self.prefix = f"barbican-qualify-{self.run_id}"
        self.lib = None
        self.raw: RawModule | None = None
        self.session = None
        self._memo: dict[str, Any] = {}
        self._labels: set[str] = set()
        self._objects: list[Any] = []

    # -- plumbing ------------------------------------------------------------------
    def _fail(self, requirement: str, detail: str, options: Iterable[str | None] = (None,), *,
              error: str | None = None, mechanism: str | None = None, call: str | None = None) -> CheckResult:
        options = tuple(options) or (None,)
        issue = find_known_issue(self.opts, [o for o in options if o], error)
        option = issue.option if issue else options[0]
        hint = issue.hint() if issue else generic_hint(self.opts, option)
        value = self._value(option) if option else None
        return CheckResult(requirement, False, detail, option=option, value=value, hint=hint,
                           mechanism=mechanism, call=call, error=error)

    def _value(self, option: str) -> str:
        """The option's value in this run, as shown in messages (the PIN never)."""
        t = self.target
        if option == "login":
            return "***" if t.pin else "(no PIN given)"
        if option == "token_labels" and t.token_label:
            return t.token_label
        if option == "token_serial_number" and t.token_serial:
            return t.token_serial
        if option == "library_path":
            return t.module
        return self.opts.value(option) + ("" if option in self.opts.explicit else " (Barbican's default)")

    @staticmethod
    def _ok(requirement: str, detail: str, *, option: str | None = None, mechanism: str | None = None,
            call: str | None = None) -> CheckResult:
        return CheckResult(requirement, True, detail, option=option, mechanism=mechanism, call=call)

    def _step(self, name: str, fn):
        """Memoised prerequisite: its value, or _Blocked naming the failed requirement."""
        if name not in self._memo:
            try:
                self._memo[name] = ("ok", fn())
            except _Blocked as exc:
                self._memo[name] = ("blocked", exc)
            except (PKCS11Error, _Failure) as exc:
                self._memo[name] = ("error", exc)
        state, value = self._memo[name]
        if state == "ok":
            return value
        if state == "blocked":
            raise _Blocked(str(value), value.error, value.step)
        if isinstance(value, _Failure):
            raise _Blocked(f"{name} failed ({value.detail})", value.kind, name)
        raise _Blocked(f"{name} failed ({ckr_name(value)})", ckr_name(value), name)

    def _blocked(self, requirement: str, exc: _Blocked, options: Iterable[str | None] = (None,),
                 **kw) -> CheckResult:
        """A check that could not run: blame the failed prerequisite's options first."""
        root = _STEP_OPTIONS.get(exc.step or "", ())
        return self._fail(requirement, f"not exercised: {exc}", tuple(root) + tuple(options), error=exc.error,
                          **kw)

    def _session(self):
        return self._step("session.login", self._login)

    def _mechs(self) -> set[int]:
        def listing():
            return {int(m) for m in self._token().slot.get_mechanisms()}
        return self._step("mechanism.list", listing)

    def _token(self):
        return self._step("token.found", self._find_token)

    def _label(self, what: str) -> str:
        label = f"{self.prefix}-{what}"
        self._labels.add(label)
        return label

    def _track(self, obj):
        self._objects.append(obj)
        return obj

    # -- steps -----------------------------------------------------------------------
    def _load(self):
        if self.lib is None:
            self.lib, self.raw = load_library(self.target.module, self.opts.os_locking_ok)
        return self.lib

    def _find_token(self):
        lib = self._load()
        labels = (self.target.token_label,) if self.target.token_label else self.opts.token_labels
        serial = None if self.target.token_label else (self.target.token_serial or self.opts.token_serial_number)
        tokens = []
        for slot in lib.get_slots(token_present=True):   # C_GetSlotList(CK_TRUE) + C_GetTokenInfo
            try:
                tokens.append(slot.get_token())
            except PKCS11Error:
                continue
        if serial:
            matches = [t for t in tokens if t.serial.decode(errors="replace").strip() == serial]
            what = f"serial number {serial!r}"
        elif labels:
            matches = [t for t in tokens if t.label.strip() in labels]
            what = f"label {', '.join(repr(x) for x in labels)}"
        else:
            raise _Failure(NO_TOKEN, "no token label or serial number given (Barbican would fall back to slot_id)")
        if not matches:
            seen = ", ".join(f"{t.label.strip()!r} (serial {t.serial.decode(errors='replace').strip()})"
                             for t in tokens if t.label.strip())
            raise _Failure(NO_TOKEN, f"no token with {what}; tokens present: {seen or 'none'}")
        self._memo["token.matches"] = ("ok", (what, len(matches)))
        return matches[0]

    def _login(self):
        token = self._token()
        if self.target.pin is None:
            raise _Failure("NO_PIN", "no user PIN given (--p11-pin-env VAR, or login in the options file)")
        session = token.open(rw=True, user_pin=self.target.pin)  # C_OpenSession(RW) + C_Login(CKU_USER)
        self.session = session
        return session

    def _barbican_key_template(self, key_type: KeyType, length: int, *, token: bool, sensitive: bool,
                               encrypt: bool = False, sign: bool = False, wrap: bool = False,
                               extractable: bool, label: str | None) -> dict:
        # Exactly the attributes of barbican PKCS11.generate_key; DEFAULT drops python-pkcs11's extras.
        return {
            Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: key_type,
            Attribute.VALUE_LEN: length, Attribute.TOKEN: token, Attribute.PRIVATE: True,
            Attribute.SENSITIVE: sensitive, Attribute.ENCRYPT: encrypt, Attribute.DECRYPT: encrypt,
            Attribute.SIGN: sign, Attribute.VERIFY: sign, Attribute.WRAP: wrap, Attribute.UNWRAP: wrap,
            Attribute.EXTRACTABLE: extractable, Attribute.LABEL: label if label else DEFAULT,
            Attribute.ID: DEFAULT, Attribute.DERIVE: DEFAULT,
        }

    def _generate(self, session, key_type_name: str, length: int, mech_name: str, **kw):
        key_type = KEY_TYPES[key_type_name]
        template = self._barbican_key_template(key_type, length, **kw)
        key = session.generate_key(key_type, length * 8, mechanism=mechanism_of(mech_name),
                                   store=kw["token"], capabilities=MechanismFlag(0), template=template)
        return self._track(key)

    def _gen_mkek(self):
        return self._generate(self._session(), "CKK_AES", self.opts.mkek_length, "CKM_AES_KEY_GEN",
                              token=True, sensitive=True, encrypt=True, wrap=True, extractable=False,
                              label=self._label("mkek"))

    def _gen_hmac(self):
        return self._generate(self._session(), self.opts.hmac_key_type, HMAC_KEY_BYTES,
                              self.opts.hmac_keygen_mechanism, token=True, sensitive=True, sign=True,
                              extractable=False, label=self._label("hmac"))

    def _gen_pkek(self, session=None, label: str | None = None):
        return self._generate(session or self._session(), "CKK_AES", self.opts.pkek_length, "CKM_AES_KEY_GEN",
                              token=False, sensitive=self.opts.always_set_cka_sensitive, encrypt=True,
                              extractable=True, label=label)

    # Barbican's PKCS11.encrypt/decrypt for the configured encryption_mechanism.
    def encrypt(self, session, key, data: bytes) -> tuple[bytes, bytes]:
        name = self.opts.encryption_mechanism
        mech = mechanism_of(name)
        if name == "CKM_AES_CBC":
            iv = session.generate_random(CBC_IV_BYTES * 8)
            return iv, key.encrypt(_pkcs7_pad(data), mechanism=mech, mechanism_param=iv)
        if self.opts.aes_gcm_generate_iv:
            nonce = session.generate_random(GCM_NONCE_BYTES * 8)
            if name == "CKM_AES_GCM":
                param: Any = GCMParams(nonce)
                keep = None
            else:
                param, keep = gcm_params_raw(nonce)
            ct = key.encrypt(data, mechanism=mech, mechanism_param=param)
            del keep
            if len(ct) != len(data) + GCM_TAG_BYTES:
                raise _Failure(MISMATCH, f"C_Encrypt returned {len(ct)} bytes for {len(data)} bytes; "
                                         f"expected plaintext + {GCM_TAG_BYTES}-byte tag")
            return nonce, ct
        param, keep = gcm_params_raw(None)
        out = key.encrypt(data, mechanism=mech, mechanism_param=param)
        del keep
        if len(out) != len(data) + 2 * GCM_TAG_BYTES:
            raise _Failure(NO_HSM_IV, f"C_Encrypt without an IV returned {len(out)} bytes for {len(data)} bytes "
                                      f"of plaintext; Barbican expects ciphertext + tag + a 16-byte "
                                      f"HSM-generated IV ({len(data) + 2 * GCM_TAG_BYTES} bytes) and takes "
                                      f"the last 16 bytes as the IV")
        return out[-GCM_TAG_BYTES:], out[:-GCM_TAG_BYTES]

    def decrypt(self, session, key, iv: bytes, ct: bytes) -> bytes:
        name = self.opts.encryption_mechanism
        mech = mechanism_of(name)
        if name == "CKM_AES_CBC":
            return _pkcs7_unpad(key.decrypt(ct, mechanism=mech, mechanism_param=iv))
        if name == "CKM_AES_GCM" and len(iv) <= GCM_NONCE_BYTES:
            return key.decrypt(ct, mechanism=mech, mechanism_param=GCMParams(iv))
        param, keep = gcm_params_raw(iv)
        pt = key.decrypt(ct, mechanism=mech, mechanism_param=param)
        del keep
        return pt

    def wrap(self, session, mkek, pkek) -> tuple[bytes | None, bytes]:
        name = self.opts.key_wrap_mechanism
        iv = session.generate_random(KEY_WRAP_IV_BYTES[name] * 8) if self.opts.key_wrap_generate_iv else None
        return iv, mkek.wrap_key(pkek, mechanism=mechanism_of(name), mechanism_param=iv)

    def unwrap(self, mkek, iv: bytes | None, wrapped: bytes):
        # Barbican's exact C_UnwrapKey template (note: no CKA_VALUE_LEN, no label).
        template = {
            Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES, Attribute.TOKEN: False,
            Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True, Attribute.EXTRACTABLE: True,
            Attribute.WRAP: DEFAULT, Attribute.UNWRAP: DEFAULT, Attribute.SIGN: DEFAULT,
            Attribute.VERIFY: DEFAULT, Attribute.DERIVE: DEFAULT, Attribute.LABEL: DEFAULT, Attribute.ID: DEFAULT,
        }
        key = mkek.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, wrapped,
                              mechanism=mechanism_of(self.opts.key_wrap_mechanism), mechanism_param=iv,
                              store=False, capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                              template=template)
        return self._track(key)

    # -- public checks ----------------------------------------------------------------
    def check_options(self) -> list[CheckResult]:
        """options.valid: every option has a value Barbican accepts."""
        if not self.opts.problems:
            given = ", ".join(sorted(self.opts.explicit - SECRET_OPTIONS)) or "none"
            return [self._ok("options.valid", f"all options acceptable to Barbican (given: {given}; "
                                              f"the rest take Barbican's defaults)")]
        out = []
        for p in self.opts.problems:
            issue = find_known_issue(self.opts, [p.option], INVALID_VALUE)
            hint = issue.hint() if issue else generic_hint(self.opts, p.option)
            out.append(CheckResult("options.valid", False, p.reason, option=p.option, value=p.value,
                                   hint=hint, error=INVALID_VALUE))
        return out

    def check_symbols(self) -> CheckResult:
        """library.symbols: the module exports every C_* function Barbican calls by name."""
        req, call = "library.symbols", "dlsym(C_*)"
        try:
            raw = self.raw or RawModule(self.target.module)
        except OSError as exc:
            return self._fail(req, f"cannot dlopen {self.target.module}: {exc}", ("library_path",),
                              error=MISSING_SYMBOL, call=call)
        wanted = BARBICAN_CALLS + ((SEED_CALL,) if self.opts.seed_file else ())
        missing = [n for n in wanted if not raw.has(n)]
        if missing:
            return self._fail(req, f"{self.target.module} does not export {', '.join(missing)} "
                                   f"(Barbican's cffi binding fails with AttributeError at the first such call)",
                              ("library_path",), error=MISSING_SYMBOL, call=call)
        return self._ok(req, f"exports all {len(wanted)} C_* functions Barbican calls", call=call)

    def check_token(self) -> CheckResult:
        """token.found: C_GetSlotList(CK_TRUE) + C_GetTokenInfo find the token."""
        req, call = "token.found", "C_Initialize, C_GetSlotList, C_GetTokenInfo"
        opts = ("token_serial_number", "token_labels") if (self.target.token_serial or (
            not self.target.token_label and self.opts.token_serial_number)) else ("token_labels",)
        try:
            token = self._token()
        except _Blocked as exc:
            _, err = self._memo.get("token.found", (None, None))
            if isinstance(err, _Failure):
                return self._fail(req, err.detail, opts, error=err.kind, call=call)
            if isinstance(err, PKCS11Error):
                return self._fail(req, f"loading or searching the module failed with {ckr_name(err)}",
                                  ("library_path",), error=ckr_name(err), call=call)
            return self._fail(req, str(exc), opts, call=call)
        what, n = self._memo["token.matches"][1]
        extra = f"; {n} tokens match, Barbican uses the first (slot {token.slot.slot_id})" if n > 1 else ""
        locking = " with CKF_OS_LOCKING_OK" if self.opts.os_locking_ok else " with NULL args"
        return self._ok(req, f"token {token.label.strip()!r} (wanted: {what}) found in slot {token.slot.slot_id} "
                             f"({token.manufacturer_id} {token.model}); C_Initialize{locking}{extra}", call=call)

    def check_login(self) -> CheckResult:
        """session.login: C_OpenSession(RW) + C_Login(CKU_USER); a later session is logged in too."""
        req, call = "session.login", "C_OpenSession, C_Login, C_GetSessionInfo"
        try:
            self._session()
        except _Blocked as exc:
            _, err = self._memo.get("session.login", (None, None))
            if isinstance(err, PKCS11Error):
                return self._fail(req, f"C_Login(CKU_USER) failed with {ckr_name(err)}", ("login",),
                                  error=ckr_name(err), call=call)
            if isinstance(err, _Failure):
                return self._fail(req, err.detail, ("login",), error=err.kind, call=call)
            return self._blocked(req, exc, ("token_labels",), call=call)
        detail = "logged in with the user PIN"
        if self.raw is not None:
            # Barbican's get_session: open a session, C_GetSessionInfo, C_Login only if public.
            second = self._token().open(rw=self.opts.rw_session)
            try:
                rv, state = self.raw.session_state(second.handle)
                if rv != 0:
                    return self._fail(req, f"C_GetSessionInfo failed with {rv_name(rv)}", (None,),
                                      error=rv_name(rv), call=call)
                name = SESSION_STATES.get(state, str(state))
                if state in (0, 2):
                    rv = self.raw.login(second.handle, self.target.pin or "")
                    if rv not in (0, CKR_USER_ALREADY_LOGGED_IN):
                        return self._fail(req, f"a second session is {name} and C_Login in it failed with "
                                               f"{rv_name(rv)}", ("login",), error=rv_name(rv), call=call)
                    detail += f"; a second session was {name} and Barbican's C_Login in it worked"
                else:
                    detail += f"; a second session is {name} (Barbican skips C_Login there)"
            finally:
                second.close()
        return self._ok(req, detail, option="login", call=call)

    def check_random(self) -> CheckResult:
        """rng: C_GenerateRandom (100-byte self-test, IV sizes) and C_SeedRandom if seed_file is set."""
        req, call = "rng.generate_random", "C_GenerateRandom"
        try:
            session = self._session()
            sample = session.generate_random(RNG_SELF_TEST_BYTES * 8)
            if len(sample) != RNG_SELF_TEST_BYTES or sample == bytes(RNG_SELF_TEST_BYTES):
                return self._fail(req, "the 100-byte RNG self-test returned zeros (Barbican refuses to start)",
                                  error=MISMATCH, call=call)
            sizes = sorted({CBC_IV_BYTES, GCM_NONCE_BYTES, *KEY_WRAP_IV_BYTES.values(), 32})
            for n in sizes:
                if len(session.generate_random(n * 8)) != n:
                    return self._fail(req, f"C_GenerateRandom({n}) returned the wrong length", error=MISMATCH,
                                      call=call)
            detail = f"100-byte self-test and {', '.join(map(str, sizes))}-byte draws ok"
            if self.opts.seed_file:
                call += ", C_SeedRandom"
                try:
                    with open(self.opts.seed_file, "rb") as fh:
                        seed = fh.read(self.opts.seed_length)
                except OSError as exc:
                    return self._fail(req, f"cannot read seed_file: {exc.strerror}", ("seed_file",),
                                      error="SEED_FILE", call=call)
                session.seed_random(seed)
                detail += f"; C_SeedRandom with {len(seed)} bytes of seed_file ok"
            return self._ok(req, detail, call=call)
        except _Blocked as exc:
            return self._blocked(req, exc, call=call)
        except PKCS11Error as exc:
            return self._fail(req, f"the module failed {call} with {ckr_name(exc)}",
                              ("seed_file",) if self.opts.seed_file else (None,), error=ckr_name(exc), call=call)

    def check_mechanism_listed(self, r: MechanismRequirement) -> CheckResult:
        """mechanism.listed: C_GetMechanismList contains the mechanism."""
        return self._hard_coded(r, self._check_listed(r))

    def check_mechanism_info(self, r: MechanismRequirement) -> CheckResult:
        """mechanism.info: C_GetMechanismInfo flags and key sizes cover Barbican's use."""
        return self._hard_coded(r, self._check_info(r))

    @staticmethod
    def _hard_coded(r: MechanismRequirement, result: CheckResult) -> CheckResult:
        unsupported = result.error in (NOT_LISTED, FLAG_MISSING, KEY_SIZE, "CKR_MECHANISM_INVALID")
        if not result.passed and r.option is None and not result.hint and unsupported:
            result.hint = HARD_CODED_HINT
        return result

    def _check_listed(self, r: MechanismRequirement) -> CheckResult:
        req, call = f"mechanism.listed[{r.id}]", "C_GetMechanismList"
        try:
            listed = self._mechs()
        except _Blocked as exc:
            return self._blocked(req, exc, (r.option,), mechanism=r.mechanism, call=call)
        if r.code in listed:
            return self._ok(req, f"{r.mechanism} (0x{r.code:X}) is listed; Barbican needs it for {r.purpose}",
                            option=r.option, mechanism=r.mechanism, call=call)
        return self._fail(req, f"{r.mechanism} (0x{r.code:X}) is not in C_GetMechanismList; Barbican needs it "
                               f"for {r.purpose}", (r.option,), error=NOT_LISTED, mechanism=r.mechanism, call=call)

    def mechanism_info(self, code: int) -> tuple[int, int, int]:
        slot = self._token().slot
        if self.raw is not None:
            rv, info = self.raw.mechanism_info(slot.slot_id, code)
            if rv != 0:
                raise _Failure(rv_name(rv), f"C_GetMechanismInfo failed with {rv_name(rv)}")
            return info
        i = slot.get_mechanism_info(code)
        return int(i.min_key_length or 0), int(i.max_key_length or 0), int(i.flags) & KNOWN_FLAG_MASK

    def _check_info(self, r: MechanismRequirement) -> CheckResult:
        req, call = f"mechanism.info[{r.id}]", "C_GetMechanismInfo"
        try:
            if r.code not in self._mechs():
                return self._fail(req, f"{r.mechanism} is not in C_GetMechanismList", (r.option,),
                                  error=NOT_LISTED, mechanism=r.mechanism, call=call)
            lo, hi, flags = self.mechanism_info(r.code)
        except _Blocked as exc:
            return self._blocked(req, exc, (r.option,), mechanism=r.mechanism, call=call)
        except _Failure as exc:
            return self._fail(req, exc.detail, (r.option,), error=exc.kind, mechanism=r.mechanism, call=call)
        have = "|".join(n for n, b in FLAG_BITS.items() if flags & b) or "none of ours"
        missing = [n for n in r.flags if not flags & FLAG_BITS[n]]
        sizes = f"key sizes {lo}..{hi}"
        if missing:
            return self._fail(req, f"C_GetMechanismInfo({r.mechanism}) lacks "
                                   f"{', '.join('CKF_' + m for m in missing)} (module reports {have}, {sizes}); "
                                   f"Barbican needs {'|'.join(r.flags)} for {r.purpose}",
                              (r.option,), error=FLAG_MISSING, mechanism=r.mechanism, call=call)
        notes, bad = [], []
        for n in r.key_bytes:
            if lo == 0 and hi == 0:
                notes.append("no key sizes reported")
            elif lo <= n <= hi:
                continue
            elif lo <= n * 8 <= hi:
                notes.append(f"{n}-byte keys covered if the module reports bits")
            else:
                bad.append(n)
        if bad:
            option = "mkek_length" if r.option in (None, "key_wrap_mechanism") else r.option
            return self._fail(req, f"C_GetMechanismInfo({r.mechanism}) reports {sizes}, which does not cover "
                                   f"{', '.join(f'{b}-byte' for b in bad)} keys",
                              (option, r.option), error=KEY_SIZE, mechanism=r.mechanism, call=call)
        extra = f" ({'; '.join(sorted(set(notes)))})" if notes else ""
        return self._ok(req, f"{r.mechanism}: {have}, {sizes} covers "
                             f"{', '.join(f'{n}-byte' for n in r.key_bytes)} keys{extra}",
                        option=r.option, mechanism=r.mechanism, call=call)

    def check_generate_mkek(self) -> CheckResult:
        """keygen.mkek: C_GenerateKey(CKM_AES_KEY_GEN) of a token, non-extractable AES MKEK."""
        req, call = "keygen.mkek", "C_GenerateKey"
        mech = "CKM_AES_KEY_GEN"
        try:
            key = self._step("keygen.mkek", self._gen_mkek)
        except _Blocked as exc:
            err = self._memo.get("keygen.mkek", (None, None))[1]
            if isinstance(err, PKCS11Error):
                return self._fail(req, f"C_GenerateKey(CKM_AES_KEY_GEN, {self.opts.mkek_length} bytes, token, "
                                       f"non-extractable, WRAP/UNWRAP) failed with {ckr_name(err)}",
                                  ("mkek_length",), error=ckr_name(err), mechanism=mech, call=call)
            return self._blocked(req, exc, ("mkek_length",), mechanism=mech, call=call)
        try:
            if key[Attribute.EXTRACTABLE]:
                return self._fail(req, "the module ignored CKA_EXTRACTABLE=False: the MKEK could be exported",
                                  error=ATTRIBUTE_IGNORED, mechanism=mech, call=call)
            token_obj = bool(key[Attribute.TOKEN])
        except PKCS11Error:
            token_obj = True
        if not token_obj:
            return self._fail(req, "the module created a session object despite CKA_TOKEN=True",
                              error=ATTRIBUTE_IGNORED, mechanism=mech, call=call)
        return self._ok(req, f"{self.opts.mkek_length}-byte AES token key, sensitive, non-extractable, "
                             f"ENCRYPT/DECRYPT/WRAP/UNWRAP (as barbican-manage hsm gen_mkek makes it)",
                        option="mkek_length", mechanism=mech, call=call)

    def check_generate_hmac_key(self) -> CheckResult:
        """keygen.hmac: C_GenerateKey(hmac_keygen_mechanism) of a token hmac_key_type key."""
        req, call = "keygen.hmac", "C_GenerateKey"
        mech = self.opts.hmac_keygen_mechanism
        opts = ("hmac_keygen_mechanism", "hmac_key_type")
        if mech not in MECHANISMS or self.opts.hmac_key_type not in KEY_TYPES:
            return self._fail(req, "not exercised: hmac_key_type/hmac_keygen_mechanism has a value Barbican "
                                   "does not accept", opts, error=INVALID_VALUE, mechanism=mech, call=call)
        try:
            self._step("keygen.hmac", self._gen_hmac)
        except _Blocked as exc:
            err = self._memo.get("keygen.hmac", (None, None))[1]
            if isinstance(err, PKCS11Error):
                return self._fail(req, f"C_GenerateKey({mech}, {self.opts.hmac_key_type}, {HMAC_KEY_BYTES} bytes, "
                                       f"token, SIGN/VERIFY) failed with {ckr_name(err)}", opts,
                                  error=ckr_name(err), mechanism=mech, call=call)
            return self._blocked(req, exc, opts, mechanism=mech, call=call)
        return self._ok(req, f"{HMAC_KEY_BYTES}-byte {self.opts.hmac_key_type} token key made with {mech}, "
                             f"SIGN/VERIFY (as barbican-manage hsm gen_hmac makes it)",
                        option="hmac_keygen_mechanism", mechanism=mech, call=call)

    def check_find_by_label(self) -> CheckResult:
        """objects.find_by_label: C_FindObjects(CLASS, KEY_TYPE, LABEL) finds exactly one key."""
        req, call = "objects.find_by_label", "C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal"
        try:
            session = self._session()
            found = []
            for what, type_name, label_of in (("MKEK", "CKK_AES", "mkek"),
                                              ("HMAC key", self.opts.hmac_key_type, "hmac")):
                step = "keygen.mkek" if label_of == "mkek" else "keygen.hmac"
                self._step(step, self._gen_mkek if label_of == "mkek" else self._gen_hmac)
                label = f"{self.prefix}-{label_of}"
                n = len(list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                                  Attribute.KEY_TYPE: KEY_TYPES[type_name],
                                                  Attribute.LABEL: label})))
                if n != 1:
                    opt = ("hmac_key_type", "hmac_keygen_mechanism") if label_of == "hmac" else (None,)
                    why = ("Barbican raises P11CryptoPluginKeyException for more than one match" if n > 1 else
                           "Barbican raises P11CryptoKeyHandleException ('Could not find key labeled ...')")
                    return self._fail(req, f"searching for the {what} by class, key type {type_name} and label "
                                           f"found {n} objects; {why}", opt, error=KEY_NOT_FOUND, call=call)
                found.append(what)
            none = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                             Attribute.LABEL: f"{self.prefix}-absent"}))
            if none:
                return self._fail(req, f"a search for a label that does not exist returned {len(none)} objects",
                                  error=MISMATCH, call=call)
            detail = f"exactly one {' and one '.join(found)} found; an unknown label finds nothing"
            for option, type_name in (("mkek_label", "CKK_AES"), ("hmac_label", self.opts.hmac_key_type)):
                label = getattr(self.opts, option)
                if not label:
                    continue
                n = len(list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                                  Attribute.KEY_TYPE: KEY_TYPES[type_name],
                                                  Attribute.LABEL: label})))
                if n > 1:
                    return self._fail(req, f"{n} {type_name} keys carry the label {label!r}; Barbican raises "
                                           f"P11CryptoPluginKeyException", (option,), error=KEY_NOT_FOUND, call=call)
                detail += (f"; {option} {label!r}: " +
                           ("present" if n == 1 else "not created yet (barbican-manage hsm "
                                                     f"{'gen_mkek' if option == 'mkek_label' else 'gen_hmac'})"))
            return self._ok(req, detail, call=call)
        except _Blocked as exc:
            return self._blocked(req, exc, call=call)
        except PKCS11Error as exc:
            return self._fail(req, f"object search failed with {ckr_name(exc)}", error=ckr_name(exc), call=call)

    def check_generate_pkek(self) -> CheckResult:
        """keygen.pkek: C_GenerateKey(CKM_AES_KEY_GEN) of a session, extractable project KEK."""
        req, call, mech = "keygen.pkek", "C_GenerateKey", "CKM_AES_KEY_GEN"
        opts = ("always_set_cka_sensitive", "pkek_length")
        try:
            key = self._step("keygen.pkek", self._gen_pkek)
        except _Blocked as exc:
            err = self._memo.get("keygen.pkek", (None, None))[1]
            if isinstance(err, PKCS11Error):
                return self._fail(req, f"C_GenerateKey(CKM_AES_KEY_GEN, {self.opts.pkek_length} bytes, session, "
                                       f"extractable, sensitive={self.opts.always_set_cka_sensitive}) failed with "
                                       f"{ckr_name(err)}", opts, error=ckr_name(err), mechanism=mech, call=call)
            return self._blocked(req, exc, opts, mechanism=mech, call=call)
        try:
            if not key[Attribute.EXTRACTABLE]:
                return self._fail(req, "the module made the project KEK non-extractable; Barbican must wrap it",
                                  opts, error="CKR_KEY_UNEXTRACTABLE", mechanism=mech, call=call)
        except PKCS11Error:
            pass
        return self._ok(req, f"{self.opts.pkek_length}-byte AES session key, extractable, "
                             f"sensitive={self.opts.always_set_cka_sensitive}, ENCRYPT/DECRYPT",
                        option="pkek_length", mechanism=mech, call=call)

    def check_encrypt_decrypt(self, sizes: Iterable[int] = _CBC_SIZES) -> CheckResult:
        """encrypt.roundtrip: C_Encrypt/C_Decrypt of secrets with encryption_mechanism and the pKEK."""
        mech = self.opts.encryption_mechanism
        req, call = "encrypt.roundtrip", "C_EncryptInit, C_Encrypt, C_DecryptInit, C_Decrypt"
        opts = ("encryption_mechanism",) + (("aes_gcm_generate_iv",) if mech != "CKM_AES_CBC" else ())
        if mech not in MECHANISMS:
            return self._fail(req, "not exercised: Barbican does not accept this encryption_mechanism", opts,
                              error=INVALID_VALUE, mechanism=mech, call=call)
        if mech != "CKM_AES_CBC" and not self.opts.aes_gcm_generate_iv:
            opts = ("aes_gcm_generate_iv", "encryption_mechanism")
        try:
            session = self._session()
            key = self._step("keygen.pkek", self._gen_pkek)
            sizes = tuple(sizes)
            for n in sizes:
                data = secrets.token_bytes(n)
                iv, ct = self.encrypt(session, key, data)
                if n >= 16 and ct[:n] == data:
                    raise _Failure(MISMATCH, "the ciphertext starts with the plaintext")
                if self.decrypt(session, key, iv, ct) != data:
                    raise _Failure(MISMATCH, f"decrypting {n} bytes did not give the plaintext back")
        except _Blocked as exc:
            return self._blocked(req, exc, opts, mechanism=mech, call=call)
        except _Failure as exc:
            return self._fail(req, exc.detail, opts, error=exc.kind, mechanism=mech, call=call)
        except PKCS11Error as exc:
            return self._fail(req, f"the module rejects {mech} encryption/decryption with {ckr_name(exc)}", opts,
                              error=ckr_name(exc), mechanism=mech, call=call)
        how = ("16-byte IV, PKCS#7 padding done by Barbican" if mech == "CKM_AES_CBC" else
               "12-byte host IV, 128-bit tag" if self.opts.aes_gcm_generate_iv else "HSM-generated IV")
        return self._ok(req, f"{mech} ({how}) round-trips {', '.join(map(str, sizes))}-byte secrets",
                        option="encryption_mechanism", mechanism=mech, call=call)

    def _wrapped(self):
        def do():
            session = self._session()
            mkek = self._step("keygen.mkek", self._gen_mkek)
            pkek = self._step("keygen.pkek", self._gen_pkek)
            iv, wrapped = self.wrap(session, mkek, pkek)
            return iv, wrapped
        return self._step("keywrap.wrap", do)

    def check_wrap(self) -> CheckResult:
        """keywrap.wrap: C_WrapKey(key_wrap_mechanism) of the pKEK with the MKEK (length query, then data)."""
        mech = self.opts.key_wrap_mechanism
        req, call = "keywrap.wrap", "C_WrapKey (x2)"
        opts = ("key_wrap_mechanism", "key_wrap_generate_iv", "always_set_cka_sensitive")
        iv_note = (f"{KEY_WRAP_IV_BYTES.get(mech, '?')}-byte IV" if self.opts.key_wrap_generate_iv else "no IV")
        try:
            _iv, wrapped = self._wrapped()
        except _Blocked as exc:
            err = self._memo.get("keywrap.wrap", (None, None))[1]
            if isinstance(err, PKCS11Error):
                return self._fail(req, f"the module rejects C_WrapKey({mech}, {iv_note}) with {ckr_name(err)}",
                                  opts, error=ckr_name(err), mechanism=mech, call=call)
            return self._blocked(req, exc, opts, mechanism=mech, call=call)
        return self._ok(req, f"{mech} ({iv_note}) wrapped the {self.opts.pkek_length}-byte project KEK into "
                             f"{len(wrapped)} bytes", option="key_wrap_mechanism", mechanism=mech, call=call)

    def check_unwrap(self) -> CheckResult:
        """keywrap.unwrap: C_UnwrapKey with Barbican's template gives back the same key."""
        mech = self.opts.key_wrap_mechanism
        req, call = "keywrap.unwrap", "C_UnwrapKey"
        opts = ("key_wrap_mechanism", "key_wrap_generate_iv")
        try:
            session = self._session()
            iv, wrapped = self._wrapped()
            mkek = self._step("keygen.mkek", self._gen_mkek)
            pkek = self._step("keygen.pkek", self._gen_pkek)
            key = self.unwrap(mkek, iv, wrapped)
        except _Blocked as exc:
            return self._blocked(req, exc, opts, mechanism=mech, call=call)
        except PKCS11Error as exc:
            return self._fail(req, f"the module rejects C_UnwrapKey({mech}) with Barbican's template with "
                                   f"{ckr_name(exc)}", opts, error=ckr_name(exc), mechanism=mech, call=call)
        try:
            data = b"barbican unwrap cross-check"
            eiv, ct = self.encrypt(session, pkek, data)
            same = self.decrypt(session, key, eiv, ct) == data
        except (PKCS11Error, _Failure) as exc:
            err = exc.detail if isinstance(exc, _Failure) else ckr_name(exc)
            return self._ok(req, f"C_UnwrapKey({mech}) gave a key (not cross-checked: "
                                 f"{self.opts.encryption_mechanism} failed: {err})",
                            option="key_wrap_mechanism", mechanism=mech, call=call)
        if not same:
            return self._fail(req, "the unwrapped key does not decrypt what the original project KEK encrypted",
                              opts, error=MISMATCH, mechanism=mech, call=call)
        return self._ok(req, f"C_UnwrapKey({mech}) gave back the project KEK (it decrypts what the original "
                             f"encrypted)", option="key_wrap_mechanism", mechanism=mech, call=call)

    def check_hmac(self) -> CheckResult:
        """hmac.sign_verify: C_Sign/C_Verify(hmac_mechanism) over iv||wrapped_key with the HMAC key."""
        mech = self.opts.hmac_mechanism
        req, call = "hmac.sign_verify", "C_SignInit, C_Sign, C_VerifyInit, C_Verify"
        opts = ("hmac_mechanism", "hmac_key_type", "hmac_keygen_mechanism")
        if mech not in MECHANISMS:
            return self._fail(req, "not exercised: Barbican does not accept this hmac_mechanism", opts,
                              error=INVALID_VALUE, mechanism=mech, call=call)
        note = ""
        try:
            self._session()
            key = self._step("keygen.hmac", self._gen_hmac)
            try:
                iv, wrapped = self._wrapped()
                data = (iv or b"") + wrapped
                note = "iv||wrapped_key"
            except _Blocked:
                data = secrets.token_bytes(56)
                note = "a 56-byte stand-in (no wrapped key: see keywrap.wrap)"
            m = mechanism_of(mech)
            sig = key.sign(data, mechanism=m)
            if len(sig) > HMAC_SIGNATURE_BUFFER:
                return self._fail(req, f"the signature is {len(sig)} bytes; Barbican's C_Sign buffer holds 32",
                                  opts, error="CKR_BUFFER_TOO_SMALL", mechanism=mech, call=call)
            if not key.verify(data, sig, mechanism=m):
                return self._fail(req, "C_Verify rejects the module's own signature", opts, error=MISMATCH,
                                  mechanism=mech, call=call)
            tampered = bytes([data[0] ^ 1]) + data[1:]
            if key.verify(tampered, sig, mechanism=m):
                return self._fail(req, "C_Verify accepts a signature over different data", opts, error=MISMATCH,
                                  mechanism=mech, call=call)
        except _Blocked as exc:
            return self._blocked(req, exc, opts, mechanism=mech, call=call)
        except PKCS11Error as exc:
            return self._fail(req, f"the module rejects C_SignInit({mech}) with a {self.opts.hmac_key_type} key "
                                   f"with {ckr_name(exc)}", opts, error=ckr_name(exc), mechanism=mech, call=call)
        return self._ok(req, f"{mech} with a {self.opts.hmac_key_type} key signs {note} ({len(sig)}-byte "
                             f"signature), verifies it, and rejects tampered data",
                        option="hmac_mechanism", mechanism=mech, call=call)

    def check_destroy(self) -> CheckResult:
        """objects.destroy: C_DestroyObject of a session project KEK (pKEK cache expiry)."""
        req, call = "objects.destroy", "C_DestroyObject"
        try:
            session = self._session()
            key = self._gen_pkek(session, label=self._label("destroy"))
            key.destroy()
            self._objects.remove(key)
            left = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                             Attribute.LABEL: f"{self.prefix}-destroy"}))
            if left:
                return self._fail(req, "the destroyed key can still be found", error=MISMATCH, call=call)
        except _Blocked as exc:
            return self._blocked(req, exc, call=call)
        except PKCS11Error as exc:
            return self._fail(req, f"C_GenerateKey/C_DestroyObject of a session key failed with {ckr_name(exc)}",
                              ("always_set_cka_sensitive",), error=ckr_name(exc), call=call)
        return self._ok(req, "a session project KEK was destroyed and is gone", call=call)

    def check_concurrency(self, threads: int = 8, iterations: int = 100, timeout: float = 240) -> CheckResult:
        """sessions.concurrent: N threads, each opening its own sessions (Barbican opens one per request)
        and encrypting/decrypting with a shared session key, in a child process."""
        req = "sessions.concurrent"
        call = ("C_OpenSession, C_GetSessionInfo, C_FindObjects, C_GenerateRandom, C_Encrypt, C_Decrypt, "
                "C_CloseSession")
        opts = ("os_locking_ok", "encryption_mechanism")
        try:
            self._step("encrypt.roundtrip", self._one_roundtrip)
        except _Blocked as exc:
            return self._blocked(req, exc, opts, call=call)
        spec = {"module": self.target.module, "token_label": self.target.token_label,
                "token_serial": self.target.token_serial, "pin": self.target.pin,
                "options": self.opts.to_mapping(), "threads": threads, "iterations": iterations}
        t0 = time.monotonic()
        done = call_worker("harness.qualify.checks", "concurrency-worker", spec, timeout=timeout,
                           secret=self.target.pin)
        if done.timed_out:
            return self._fail(req, f"{threads} threads did not finish within {timeout:.0f}s (deadlock?)", opts,
                              error=CONCURRENCY, call=call)
        if done.signal:
            return self._fail(req, f"{threads} threads opening sessions and encrypting in parallel crashed the "
                                   f"process ({done.signal})", opts, error=CONCURRENCY, call=call)
        if done.answer is None:
            return self._fail(req, f"the concurrency worker {done.why}", opts, error=CONCURRENCY, call=call)
        out = done.answer
        if out.get("setup_error"):
            return self._fail(req, f"not exercised: {out['setup_error']}", opts, call=call)
        if out["failed"]:
            return self._fail(req, f"{out['failed']} of {out['ops']} parallel operations failed across {threads} "
                                   f"threads (errors seen: {', '.join(out['errors'])})", opts,
                              error=CONCURRENCY, call=call)
        return self._ok(req, f"{threads} threads x {iterations} sessions: {out['ops']} encrypt/decrypt round trips "
                             f"in parallel, all ok ({time.monotonic() - t0:.1f}s; os_locking_ok = "
                             f"{self.opts.value('os_locking_ok')})", option="os_locking_ok", call=call)

    def _one_roundtrip(self) -> None:
        session = self._session()
        key = self._step("keygen.pkek", self._gen_pkek)
        data = secrets.token_bytes(64)
        iv, ct = self.encrypt(session, key, data)
        if self.decrypt(session, key, iv, ct) != data:
            raise _Failure(MISMATCH, "decryption did not give the plaintext back")

    def run_concurrency_here(self, threads: int, iterations: int) -> dict[str, Any]:
        """The child-process side of check_concurrency."""
        try:
            main = self._session()
            label = self._label("concurrency")
            self._gen_pkek(main, label=label)
        except (_Blocked, PKCS11Error) as exc:
            return {"setup_error": str(exc) if isinstance(exc, _Blocked) else ckr_name(exc)}
        token = self._token()
        lock = threading.Lock()
        stats = {"ops": 0, "failed": 0, "errors": []}
        start = threading.Barrier(threads)

        def worker():
            try:
                start.wait(timeout=30)
            except threading.BrokenBarrierError:
                pass
            for _ in range(iterations):
                try:
                    with token.open(rw=self.opts.rw_session) as s:   # a session per request, as Barbican
                        if self.raw is not None:
                            rv, state = self.raw.session_state(s.handle)
                            if rv == 0 and state in (0, 2):
                                self.raw.login(s.handle, self.target.pin or "")
                        key = s.get_key(object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label=label)
                        data = s.generate_random(64 * 8)
                        iv, ct = self.encrypt(s, key, data)
                        ok = self.decrypt(s, key, iv, ct) == data
                    with lock:
                        stats["ops"] += 1
                        if not ok:
                            stats["failed"] += 1
                            if MISMATCH not in stats["errors"]:
                                stats["errors"].append(MISMATCH)
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    err = exc.kind if isinstance(exc, _Failure) else ckr_name(exc)
                    with lock:
                        stats["ops"] += 1
                        stats["failed"] += 1
                        if err not in stats["errors"] and len(stats["errors"]) < 5:
                            stats["errors"].append(err)

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return stats

    def run_all(self, threads: int = 8, iterations: int = 100) -> list[CheckResult]:
        """Every check, in the order Barbican needs them."""
        results = self.check_options() + [self.check_symbols(), self.check_token(), self.check_login(),
                                          self.check_random()]
        for r in required_mechanisms(self.opts):
            results += [self.check_mechanism_listed(r), self.check_mechanism_info(r)]
        results += [self.check_generate_mkek(), self.check_generate_hmac_key(), self.check_find_by_label(),
                    self.check_generate_pkek(), self.check_encrypt_decrypt(), self.check_wrap(),
                    self.check_unwrap(), self.check_hmac(), self.check_destroy(),
                    self.check_concurrency(threads=threads, iterations=iterations)]
        return results

    # -- cleanup -----------------------------------------------------------------------
    def close(self) -> list[str]:
        """Destroy every object the checks made, then close the session and C_Finalize.
        Returns problems met on the way (empty when all went)."""
        problems: list[str] = []
        for obj in reversed(self._objects):
            try:
                obj.destroy()
            except PKCS11Error as exc:
                if ckr_name(exc) not in ("CKR_OBJECT_HANDLE_INVALID",):
                    problems.append(f"destroy: {ckr_name(exc)}")
        self._objects.clear()
        if self.session is not None:
            for label in sorted(self._labels):   # belt and braces: anything left under our labels
                try:
                    for obj in list(self.session.get_objects({Attribute.LABEL: label})):
                        obj.destroy()
                except PKCS11Error as exc:
                    problems.append(f"sweep {label}: {ckr_name(exc)}")
            try:
                self.session.close()
            except PKCS11Error as exc:
                problems.append(f"close session: {ckr_name(exc)}")
            self.session = None
        if self.lib is not None:
            if self.raw is not None and not self.lib.initialized:
                self.raw.finalize()
            else:
                try:
                    self.lib.finalize()
                except PKCS11Error:
                    pass
            self.lib = None
        self._memo.clear()
        return problems

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _concurrency_worker(spec: dict[str, Any]) -> dict[str, Any]:
    target = Target(spec["module"], token_label=spec.get("token_label"), token_serial=spec.get("token_serial"),
                    pin=spec.get("pin"))
    q = Qualifier(target, P11Options.from_mapping(spec.get("options") or {}, source="parent"))
    try:
        return q.run_concurrency_here(int(spec["threads"]), int(spec["iterations"]))
    finally:
        q.close()


if __name__ == "__main__":
    sys.exit(serve({"concurrency-worker": _concurrency_worker}, "harness.qualify.checks"))
