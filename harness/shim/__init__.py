"""PKCS#11 fault shim: the Python side.

The shim (``p11shim.c``, built at install time into ``_p11shim*.so`` next to this file) is
a PKCS#11 module that loads the real module and forwards every call, delaying calls or
failing them with a chosen ``CKR_*`` code according to rules, and counting what it
forwards. Give its path (:func:`library_path`) to Barbican as ``[p11_crypto_plugin]
library_path`` (or to pkcs11-tool, python-pkcs11 ...) and start that process with the
variables from :func:`env`:

``P11SHIM_MODULE``     the real module (required; otherwise C_Initialize returns
                       CKR_GENERAL_ERROR and the shim says why on stderr)
``P11SHIM_CONTROL``    the control file with the rules (optional; no file = no rules)
``P11SHIM_STATS_DIR``  where each process writes ``<pid>.stats`` (optional)
``P11SHIM_STORE_LOCK`` a lock file shared by every process on the token (optional): the
                       calls that read or write the token store (C_Initialize, slot and
                       token info, sessions, login, object create/find/destroy, key
                       generation) hold an exclusive ``flock`` on it, at most 5 s each.
                       SoftHSM 2.6.1's file store needs it: a C_Initialize while another
                       process logs in misses the token ("Token Labels not found").

Control file, as the shim reads it: one rule per line, whitespace-separated
``key=value`` pairs, ``#`` starts a comment::

    fn=C_Decrypt delay_ms=500 jitter_ms=100
    fn=C_OpenSession rv=CKR_SESSION_COUNT probability=0.5 seed=7
    fn=C_Login rv=CKR_PIN_LOCKED after=3 count=2
    fn=* delay_ms=5

``fn``           a PKCS#11 function name (any of the 67 besides C_GetFunctionList) or ``*``
``delay_ms``     sleep this long before the call (fractions allowed)
``jitter_ms``    add a uniform random offset in [-jitter, +jitter] (never below 0)
``rv``           return this code instead of calling the real module: a CKR_ name or a
                 number (``0x..`` hex or decimal). Combined with a delay: sleep, then fail.
``probability``  the rule fires with this probability (0..1, default 1)
``after``        let the first N calls that select this rule through untouched
``count``        fire at most N times, then let calls through again
``seed``         seed of the rule's random stream (probability and jitter draws)

An injected failure of a call that carries an operation (C_Encrypt, C_Decrypt, C_Sign,
C_Verify, C_Digest, their Update/Final forms, C_SignRecover, C_VerifyRecover) also ends
that operation inside the real module, as PKCS#11 says a failed call does: the shim
replays the call into a scratch buffer (or calls the matching Final) and discards the
result, so the application's next C_*Init works as with a real HSM. Not done for an
injected CKR_OK or CKR_BUFFER_TOO_SMALL, which leave the operation active.

A rule with neither delay nor rv does nothing but still "wins" for its function, which
exempts that function from a ``*`` rule.

Which rule applies: for each function, the first line naming it; if none, the first
``fn=*`` line. Only that rule is considered (a later rule for the same function never
applies). Counters and random streams are **per process**: each process (and each child
after fork(), e.g. each uWSGI worker) counts ``after``/``count`` on its own, and they
restart whenever the shim re-reads the file. A ``fn=*`` rule has one counter shared by
all the functions it covers.

Reload: a process notices a changed file on its first PKCS#11 call more than 50 ms after
the change (it stats the file at most every 50 ms). :meth:`ShimControl.set_rules`
replaces the file atomically and, by default, waits 0.1 s so that the rules hold for
every call made after it returns.

Statistics: each process writes ``<stats_dir>/<pid>.stats`` at most every 0.2 s (from a
background thread, unless the application forbids library threads), at C_Finalize and
at exit; one line per function called::

    fn calls errors total_ns injected [CKR_NAME=n ...]

``calls`` counts every call (injected or forwarded), ``errors`` the calls that returned
something other than CKR_OK (injected or not; note that "errors" such as
CKR_BUFFER_TOO_SMALL or CKR_USER_ALREADY_LOGGED_IN can be normal), ``total_ns`` the time
spent inside the real module (delays and injected failures excluded), ``injected`` the
calls a rule answered without the real module, then the errors broken down by code.
C_GetFunctionList, C_GetInterface and C_GetInterfaceList are served by the shim itself:
never faulted nor counted.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from harness.errors import HarnessError

PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARY_STEM = "_p11shim"

#: Seconds between two looks at the control file, in each process.
RELOAD_INTERVAL_S = 0.05
#: Seconds between two statistics writes, in each process.
FLUSH_INTERVAL_S = 0.2

#: The 68 PKCS#11 2.40 functions, in CK_FUNCTION_LIST order; all exported by name.
FUNCTIONS: tuple[str, ...] = (
    "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList",
    "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo",
    "C_InitToken", "C_InitPIN", "C_SetPIN", "C_OpenSession", "C_CloseSession",
    "C_CloseAllSessions", "C_GetSessionInfo", "C_GetOperationState", "C_SetOperationState",
    "C_Login", "C_Logout", "C_CreateObject", "C_CopyObject", "C_DestroyObject",
    "C_GetObjectSize", "C_GetAttributeValue", "C_SetAttributeValue", "C_FindObjectsInit",
    "C_FindObjects", "C_FindObjectsFinal", "C_EncryptInit", "C_Encrypt", "C_EncryptUpdate",
    "C_EncryptFinal", "C_DecryptInit", "C_Decrypt", "C_DecryptUpdate", "C_DecryptFinal",
    "C_DigestInit", "C_Digest", "C_DigestUpdate", "C_DigestKey", "C_DigestFinal",
    "C_SignInit", "C_Sign", "C_SignUpdate", "C_SignFinal", "C_SignRecoverInit",
    "C_SignRecover", "C_VerifyInit", "C_Verify", "C_VerifyUpdate", "C_VerifyFinal",
    "C_VerifyRecoverInit", "C_VerifyRecover", "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate", "C_SignEncryptUpdate", "C_DecryptVerifyUpdate",
    "C_GenerateKey", "C_GenerateKeyPair", "C_WrapKey", "C_UnwrapKey", "C_DeriveKey",
    "C_SeedRandom", "C_GenerateRandom", "C_GetFunctionStatus", "C_CancelFunction",
    "C_WaitForSlotEvent",
)
#: PKCS#11 3.0 discovery functions, also exported (they offer the 2.40 list).
INTERFACE_FUNCTIONS: tuple[str, ...] = ("C_GetInterfaceList", "C_GetInterface")
#: Every C_* symbol the shim exports.
EXPORTED: tuple[str, ...] = FUNCTIONS + INTERFACE_FUNCTIONS
#: Functions a rule may name (the shim serves C_GetFunctionList itself).
FAULTABLE: frozenset[str] = frozenset(FUNCTIONS) - {"C_GetFunctionList"}

#: Standard CK_RV codes (PKCS#11 2.40 and 3.0, plus 3.1's CKR_KEY_EXHAUSTED); the same
#: table is compiled into the shim (a test checks they agree).
CKR: dict[str, int] = {
    "CKR_OK": 0x0, "CKR_CANCEL": 0x1, "CKR_HOST_MEMORY": 0x2, "CKR_SLOT_ID_INVALID": 0x3,
    "CKR_GENERAL_ERROR": 0x5, "CKR_FUNCTION_FAILED": 0x6, "CKR_ARGUMENTS_BAD": 0x7,
    "CKR_NO_EVENT": 0x8, "CKR_NEED_TO_CREATE_THREADS": 0x9, "CKR_CANT_LOCK": 0xA,
    "CKR_ATTRIBUTE_READ_ONLY": 0x10, "CKR_ATTRIBUTE_SENSITIVE": 0x11,
    "CKR_ATTRIBUTE_TYPE_INVALID": 0x12, "CKR_ATTRIBUTE_VALUE_INVALID": 0x13,
    "CKR_ACTION_PROHIBITED": 0x1B, "CKR_DATA_INVALID": 0x20, "CKR_DATA_LEN_RANGE": 0x21,
    "CKR_DEVICE_ERROR": 0x30, "CKR_DEVICE_MEMORY": 0x31, "CKR_DEVICE_REMOVED": 0x32,
    "CKR_AEAD_DECRYPT_FAILED": 0x35,
    "CKR_ENCRYPTED_DATA_INVALID": 0x40, "CKR_ENCRYPTED_DATA_LEN_RANGE": 0x41,
    "CKR_FUNCTION_CANCELED": 0x50, "CKR_FUNCTION_NOT_PARALLEL": 0x51,
    "CKR_FUNCTION_NOT_SUPPORTED": 0x54, "CKR_KEY_HANDLE_INVALID": 0x60,
    "CKR_KEY_SIZE_RANGE": 0x62, "CKR_KEY_TYPE_INCONSISTENT": 0x63, "CKR_KEY_NOT_NEEDED": 0x64,
    "CKR_KEY_CHANGED": 0x65, "CKR_KEY_NEEDED": 0x66, "CKR_KEY_INDIGESTIBLE": 0x67,
    "CKR_KEY_FUNCTION_NOT_PERMITTED": 0x68, "CKR_KEY_NOT_WRAPPABLE": 0x69,
    "CKR_KEY_UNEXTRACTABLE": 0x6A, "CKR_MECHANISM_INVALID": 0x70,
    "CKR_MECHANISM_PARAM_INVALID": 0x71, "CKR_OBJECT_HANDLE_INVALID": 0x82,
    "CKR_OPERATION_ACTIVE": 0x90, "CKR_OPERATION_NOT_INITIALIZED": 0x91,
    "CKR_PIN_INCORRECT": 0xA0, "CKR_PIN_INVALID": 0xA1, "CKR_PIN_LEN_RANGE": 0xA2,
    "CKR_PIN_EXPIRED": 0xA3, "CKR_PIN_LOCKED": 0xA4, "CKR_SESSION_CLOSED": 0xB0,
    "CKR_SESSION_COUNT": 0xB1, "CKR_SESSION_HANDLE_INVALID": 0xB3,
    "CKR_SESSION_PARALLEL_NOT_SUPPORTED": 0xB4, "CKR_SESSION_READ_ONLY": 0xB5,
    "CKR_SESSION_EXISTS": 0xB6, "CKR_SESSION_READ_ONLY_EXISTS": 0xB7,
    "CKR_SESSION_READ_WRITE_SO_EXISTS": 0xB8, "CKR_SIGNATURE_INVALID": 0xC0,
    "CKR_SIGNATURE_LEN_RANGE": 0xC1, "CKR_TEMPLATE_INCOMPLETE": 0xD0,
    "CKR_TEMPLATE_INCONSISTENT": 0xD1, "CKR_TOKEN_NOT_PRESENT": 0xE0,
    "CKR_TOKEN_NOT_RECOGNIZED": 0xE1, "CKR_TOKEN_WRITE_PROTECTED": 0xE2,
    "CKR_UNWRAPPING_KEY_HANDLE_INVALID": 0xF0, "CKR_UNWRAPPING_KEY_SIZE_RANGE": 0xF1,
    "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT": 0xF2, "CKR_USER_ALREADY_LOGGED_IN": 0x100,
    "CKR_USER_NOT_LOGGED_IN": 0x101, "CKR_USER_PIN_NOT_INITIALIZED": 0x102,
    "CKR_USER_TYPE_INVALID": 0x103, "CKR_USER_ANOTHER_ALREADY_LOGGED_IN": 0x104,
    "CKR_USER_TOO_MANY_TYPES": 0x105, "CKR_WRAPPED_KEY_INVALID": 0x110,
    "CKR_WRAPPED_KEY_LEN_RANGE": 0x112, "CKR_WRAPPING_KEY_HANDLE_INVALID": 0x113,
    "CKR_WRAPPING_KEY_SIZE_RANGE": 0x114, "CKR_WRAPPING_KEY_TYPE_INCONSISTENT": 0x115,
    "CKR_RANDOM_SEED_NOT_SUPPORTED": 0x120, "CKR_RANDOM_NO_RNG": 0x121,
    "CKR_DOMAIN_PARAMS_INVALID": 0x130, "CKR_CURVE_NOT_SUPPORTED": 0x140,
    "CKR_BUFFER_TOO_SMALL": 0x150, "CKR_SAVED_STATE_INVALID": 0x160,
    "CKR_INFORMATION_SENSITIVE": 0x170, "CKR_STATE_UNSAVEABLE": 0x180,
    "CKR_CRYPTOKI_NOT_INITIALIZED": 0x190, "CKR_CRYPTOKI_ALREADY_INITIALIZED": 0x191,
    "CKR_MUTEX_BAD": 0x1A0, "CKR_MUTEX_NOT_LOCKED": 0x1A1, "CKR_NEW_PIN_MODE": 0x1B0,
    "CKR_NEXT_OTP": 0x1B1, "CKR_EXCEEDED_MAX_ITERATIONS": 0x1C0,
    "CKR_FIPS_SELF_TEST_FAILED": 0x1C1, "CKR_LIBRARY_LOAD_FAILED": 0x1C2,
    "CKR_PIN_TOO_WEAK": 0x1C3, "CKR_PUBLIC_KEY_INVALID": 0x1C4,
    "CKR_FUNCTION_REJECTED": 0x200, "CKR_TOKEN_RESOURCE_EXCEEDED": 0x201,
    "CKR_OPERATION_CANCEL_FAILED": 0x202, "CKR_KEY_EXHAUSTED": 0x203,
    "CKR_VENDOR_DEFINED": 0x80000000,
}
CKR_NAMES: dict[int, str] = {v: k for k, v in CKR.items()}

_MAX_RV = 2**64 - 1


class ShimNotBuilt(HarnessError):
    """The shim's shared library is not there (the package was installed without it)."""


def library_path() -> str:
    """Path of the built shim (``harness/shim/_p11shim<suffix>.so``)."""
    for suffix in EXTENSION_SUFFIXES:
        candidate = PACKAGE_DIR / f"{LIBRARY_STEM}{suffix}"
        if candidate.is_file():
            return str(candidate)
    found = sorted(PACKAGE_DIR.glob(f"{LIBRARY_STEM}*.so"))
    if found:
        return str(found[0])
    raise ShimNotBuilt(
        f"the PKCS#11 fault shim is not built: no {LIBRARY_STEM}*.so in {PACKAGE_DIR}. "
        "It is compiled from harness/shim/p11shim.c when the project is installed: run "
        "`pip install -e .` in the repository (needs a C compiler: apt-get install -y gcc)"
    )


def env(real_module: str | os.PathLike, control_path: str | os.PathLike | None = None,
        stats_dir: str | os.PathLike | None = None,
        store_lock: str | os.PathLike | None = None) -> dict[str, str]:
    """Environment variables a process loading the shim needs (merge into its env)."""
    out = {"P11SHIM_MODULE": str(real_module)}
    if control_path is not None:
        out["P11SHIM_CONTROL"] = str(control_path)
    if stats_dir is not None:
        out["P11SHIM_STATS_DIR"] = str(stats_dir)
    if store_lock is not None:
        out["P11SHIM_STORE_LOCK"] = str(store_lock)
    return out


def keeps_store_in_shared_files(real_module: str | os.PathLike) -> bool:
    """SoftHSM (file object store): its processes must not touch the token store at the
    same time, so the shim serialises those calls (``P11SHIM_STORE_LOCK``). A vendor's
    module is left as it is."""
    return Path(real_module).name.startswith("libsofthsm2")


def store_lock_for(real_module: str | os.PathLike, control_path: str | os.PathLike) -> Path | None:
    """The lock file every process on the token shares (next to the control file), or
    None when the module needs none."""
    return Path(control_path).parent / "store.lock" if keeps_store_in_shared_files(real_module) else None


def rv_value(rv: str | int) -> int:
    """A CK_RV as a number: a ``CKR_*`` name, or an int. ValueError names a bad one."""
    if isinstance(rv, bool):
        raise ValueError(f"rv must be a CKR_ name or an integer, not {rv!r}")
    if isinstance(rv, int):
        if not 0 <= rv <= _MAX_RV:
            raise ValueError(f"rv {rv} is out of range for a CK_RV")
        return rv
    if isinstance(rv, str):
        if rv in CKR:
            return CKR[rv]
        if rv.upper().startswith("CKR_"):
            raise ValueError(f"unknown CK_RV name {rv!r} (known: CKR_OK, CKR_DEVICE_ERROR, ... "
                             "see harness.shim.CKR)")
        try:
            value = int(rv, 16) if rv.lower().startswith("0x") else int(rv, 10)
        except ValueError:
            raise ValueError(f"rv {rv!r} is neither a CKR_ name nor a number") from None
        return rv_value(value)
    raise ValueError(f"rv must be a CKR_ name or an integer, not {rv!r}")


def rv_name(rv: int) -> str:
    """``CKR_*`` name of a code, or its hex form."""
    return CKR_NAMES.get(rv, f"0x{rv:X}")


@dataclass(frozen=True)
class Rule:
    """One line of the control file (see the module docstring for the semantics)."""

    fn: str = "*"
    delay_ms: float = 0
    jitter_ms: float = 0
    rv: str | int | None = None
    probability: float = 1.0
    after: int = 0
    count: int | None = None
    seed: int | None = None

    def __post_init__(self):
        if self.fn != "*" and self.fn not in FAULTABLE:
            hint = " (served by the shim itself)" if self.fn == "C_GetFunctionList" else ""
            raise ValueError(f"unknown PKCS#11 function {self.fn!r} in a shim rule{hint}")
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value <= 86_400_000:
                raise ValueError(f"{name} must be a number of milliseconds >= 0, not {value!r}")
        if self.rv is not None:
            rv_value(self.rv)
        p = self.probability
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"probability must be between 0 and 1, not {p!r}")
        for name in ("after", "count", "seed"):
            value = getattr(self, name)
            if name != "after" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
                raise ValueError(f"{name} must be an integer >= 0, not {value!r}")

    @property
    def rv_code(self) -> int | None:
        return None if self.rv is None else rv_value(self.rv)

    def to_line(self) -> str:
        parts = [f"fn={self.fn}"]
        if self.delay_ms:
            parts.append(f"delay_ms={self.delay_ms:g}")
        if self.jitter_ms:
            parts.append(f"jitter_ms={self.jitter_ms:g}")
        if self.rv is not None:
            code = rv_value(self.rv)
            parts.append(f"rv={CKR_NAMES[code]}" if code in CKR_NAMES else f"rv=0x{code:X}")
        if self.probability != 1:
            parts.append(f"probability={self.probability!r}")
        if self.after:
            parts.append(f"after={self.after}")
        if self.count is not None:
            parts.append(f"count={self.count}")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return " ".join(parts)

    @classmethod
    def parse(cls, line: str) -> Rule | None:
        """The rule on one control-file line (None for a blank or comment line)."""
        text = line.split("#", 1)[0].strip()
        if not text:
            return None
        kwargs: dict[str, object] = {}
        for token in text.split():
            key, sep, value = token.partition("=")
            if not sep:
                raise ValueError(f"expected key=value in shim rule, got {token!r}")
            if key == "fn":
                kwargs[key] = value
            elif key in ("delay_ms", "jitter_ms", "probability"):
                kwargs[key] = float(value)
            elif key in ("after", "count", "seed"):
                kwargs[key] = int(value)
            elif key == "rv":
                kwargs[key] = value if value.startswith("CKR_") else rv_value(value)
            else:
                raise ValueError(f"unknown key {key!r} in shim rule {line.strip()!r}")
        if "fn" not in kwargs:
            raise ValueError(f"shim rule without fn=: {line.strip()!r}")
        return cls(**kwargs)


def _empty_entry() -> dict:
    return {"calls": 0, "errors": 0, "total_ns": 0, "injected": 0, "rv": {}}


def _read_stats_file(path: Path) -> tuple[str, dict[str, dict]] | None:
    """(process key, per-function stats) of one ``<pid>.stats``; None if unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return None
    key = path.stem
    out: dict[str, dict] = {}
    for line in text.splitlines():
        if line.startswith("# p11shim-stats"):
            fields = dict(f.split("=", 1) for f in line.split()[3:] if "=" in f)
            key = f"{fields.get('pid', path.stem)}:{fields.get('start_ns', '0')}"
            continue
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 5:
            continue
        entry = {"calls": int(parts[1]), "errors": int(parts[2]), "total_ns": int(parts[3]),
                 "injected": int(parts[4]), "rv": {}}
        for item in parts[5:]:
            name, _, n = item.partition("=")
            entry["rv"][name] = entry["rv"].get(name, 0) + int(n)
        out[parts[0]] = entry
    return key, out


def _subtract(current: dict, base: dict | None) -> dict:
    if not base or any(current.get(k, 0) < base.get(k, 0) for k in ("calls",)):
        return current
    out = {k: current[k] - base.get(k, 0) for k in ("calls", "errors", "total_ns", "injected")}
    out["rv"] = {name: n - base.get("rv", {}).get(name, 0) for name, n in current["rv"].items()}
    out["rv"] = {name: n for name, n in out["rv"].items() if n}
    return out


class ShimControl:
    """Drives the shims of every process pointed at ``control_path`` / ``stats_dir``.

    Containers: processes in different PID namespaces can share a pid, so give each
    container its own subdirectory of ``stats_dir`` (``stats()`` also sums
    subdirectories), and mount the control file's *directory*, not the file: the file
    is replaced by rename(), which a single-file bind mount would not show.

    ``stats()`` sums the ``<pid>.stats`` files of all processes, minus what they had at
    the last ``reset_stats()`` (kept in ``.baseline.json`` in the stats directory, so
    any ShimControl on the same directory agrees). A process writes its file at most
    every 0.2 s; for exact figures, let the processes exit or wait that long.
    """

    BASELINE = ".baseline.json"

    def __init__(self, control_path: str | os.PathLike, stats_dir: str | os.PathLike):
        self.control_path = Path(control_path)
        self.stats_dir = Path(stats_dir)
        self.control_path.parent.mkdir(parents=True, exist_ok=True)
        self.stats_dir.mkdir(parents=True, exist_ok=True)

    def env(self, real_module: str | os.PathLike) -> dict[str, str]:
        return env(real_module, self.control_path, self.stats_dir)

    # -- rules -------------------------------------------------------------------

    def set_rules(self, rules: list[Rule], settle: bool = True) -> None:
        """Replace the rules. With ``settle``, wait until every process will see them."""
        for rule in rules:
            if not isinstance(rule, Rule):
                raise TypeError(f"expected harness.shim.Rule, got {rule!r}")
        body = "# written by harness.shim.ShimControl\n" + "".join(
            rule.to_line() + "\n" for rule in rules)
        self._write(body)
        if settle:
            time.sleep(2 * RELOAD_INTERVAL_S)

    def clear(self, settle: bool = True) -> None:
        """No rules: pure pass-through."""
        self.set_rules([], settle=settle)

    def rules(self) -> list[Rule]:
        try:
            text = self.control_path.read_text()
        except FileNotFoundError:
            return []
        return [r for r in (Rule.parse(line) for line in text.splitlines()) if r is not None]

    def _write(self, body: str) -> None:
        # The shim re-reads the file when its inode, size or mtime differ from what it
        # read last. A new inode can reuse an old number and two writes can share a
        # coarse timestamp, so force the mtime to move forward on every write.
        try:
            previous = self.control_path.stat().st_mtime_ns
        except FileNotFoundError:
            previous = 0
        mtime = max(time.time_ns(), previous + 1_000_000)
        tmp = self.control_path.with_name(f".{self.control_path.name}.{os.getpid()}.tmp")
        tmp.write_text(body)
        os.utime(tmp, ns=(mtime, mtime))
        os.replace(tmp, self.control_path)

    # -- statistics --------------------------------------------------------------

    def _snapshot(self) -> dict[str, dict[str, dict]]:
        snap: dict[str, dict[str, dict]] = {}
        for path in sorted(self.stats_dir.rglob("*.stats")):
            if path.name.startswith("."):
                continue
            read = _read_stats_file(path)
            if read is not None:
                sub = path.parent.relative_to(self.stats_dir).as_posix()
                snap[read[0] if sub == "." else f"{sub}/{read[0]}"] = read[1]
        return snap

    def _baseline(self) -> dict[str, dict[str, dict]]:
        try:
            return json.loads((self.stats_dir / self.BASELINE).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def process_stats(self) -> dict[str, dict[str, dict]]:
        """Per process (``"[subdir/]<pid>:<start>"``): per-function stats since reset_stats()."""
        base = self._baseline()
        out = {}
        for key, funcs in self._snapshot().items():
            pb = base.get(key, {})
            diff = {fn: _subtract(entry, pb.get(fn)) for fn, entry in funcs.items()}
            diff = {fn: e for fn, e in diff.items() if e["calls"]}
            if diff:
                out[key] = diff
        return out

    def stats(self) -> dict[str, dict]:
        """{fn: {calls, errors, total_ns, injected, rv: {CKR_NAME: n}}} over all processes."""
        total: dict[str, dict] = {}
        for funcs in self.process_stats().values():
            for fn, entry in funcs.items():
                acc = total.setdefault(fn, _empty_entry())
                for k in ("calls", "errors", "total_ns", "injected"):
                    acc[k] += entry[k]
                for name, n in entry["rv"].items():
                    acc["rv"][name] = acc["rv"].get(name, 0) + n
        return total

    def reset_stats(self) -> None:
        """From now on, stats() counts only what happens after this call."""
        path = self.stats_dir / self.BASELINE
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._snapshot()))
        os.replace(tmp, path)
