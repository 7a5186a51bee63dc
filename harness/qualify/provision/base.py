"""Token provisioning: the small interface a vendor implements for their HSM.

A `Provisioner` gets a PKCS#11 module ready for one qualification run and takes it all
away afterwards:

    library()     the PKCS#11 library Barbican loads (`library_path`)
    check()       can the module be set up here? raise ModuleUnavailable with the reason
    start()       write the module's configuration, start any daemon it needs
    env()         the variables every process that loads the module needs (no secrets)
    init_token()  initialise a token: label, SO PIN, user PIN (default: PKCS#11 C_InitToken,
                  C_Login(SO), C_SetPIN, C_InitPIN, as any PKCS#11 module allows)
    stop()        stop the daemons; teardown(): remove everything written

`provision()` runs them in that order and always stops and tears down (also on an error or
Ctrl-C). The PINs are random, live in memory, reach child processes on stdin, and are never
on a command line or in a log. Daemons carry a marker naming their owner process, so the
next run stops the daemons of an owner that was SIGKILLed (`sweep_orphans`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil

from harness.errors import HarnessError
from harness.procs import RUN_MARKER, ManagedProcess
from harness.qualify.workers import call_worker, serve

PIN_LENGTH = 8          # within every module's range here (opencryptoki's soft token allows 4..8)
_PIN_ALPHABET = string.ascii_letters + string.digits
_MARKER_PREFIX = "qualify-hsm-token:"


class ModuleUnavailable(HarnessError):
    """The module cannot be set up or loaded here; the message is the measured reason."""


@dataclass
class Token:
    module: str                          # the library Barbican loads (library_path)
    label: str
    pin: str = field(repr=False)
    slot: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)   # manufacturer, model, serial, firmware


def new_pin() -> str:
    return "".join(secrets.choice(_PIN_ALPHABET) for _ in range(PIN_LENGTH))


class Provisioner:
    """One PKCS#11 module. Subclasses set the class attributes and override what differs
    from a plain PKCS#11 module (most override library(), check() and start())."""

    name: ClassVar[str]                       # short name: softhsm, opencryptoki ...
    title: ClassVar[str]                      # product and version as installed here
    packages: ClassVar[tuple[str, ...]] = ()  # Debian packages it comes from
    # argv prefix of the process that qualifies this module (opencryptoki: its own namespaces)
    isolation: ClassVar[tuple[str, ...]] = ()
    # The SO PIN an uninitialised token expects at C_InitToken (None: the new SO PIN itself)
    factory_so_pin: ClassVar[str | None] = None
    init_timeout: ClassVar[float] = 120.0

    def __init__(self, workdir: str | Path, log: Callable[[str], None] = lambda s: None):
        self.workdir = Path(workdir)
        self.log = log
        self.daemons: list[ManagedProcess] = []
        self._saved_env: dict[str, str | None] = {}

    # -- what a vendor implements ----------------------------------------------------
    @classmethod
    def prepare_machine(cls, log: Callable[[str], None]) -> None:
        """Once per machine, before any run (e.g. a build); cached. Nothing by default."""

    def library(self) -> str:
        raise NotImplementedError

    def check(self) -> None:
        lib = self.library()
        if not Path(lib).is_file():
            raise ModuleUnavailable(f"{lib} is not installed (Debian: {', '.join(self.packages) or '?'}; "
                                    f"./run setup installs it)")

    def start(self) -> None:
        """Configuration files and daemons; nothing by default."""

    def env(self) -> dict[str, str]:
        return {}

    def init_token(self, label: str, so_pin: str, user_pin: str) -> Token:
        """A fresh token through PKCS#11 itself (in a child process)."""
        spec = {"module": self.library(), "label": label, "so_pin": so_pin, "user_pin": user_pin,
                "factory_so_pin": self.factory_so_pin, "slot": self.token_slot()}
        done = call_worker("harness.qualify.provision.base", "init-token", spec, timeout=self.init_timeout,
                           secret=user_pin)
        if done.answer is None:
            raise ModuleUnavailable(f"initialising a token through PKCS#11: the worker {done.why}")
        if done.answer.get("error"):
            raise ModuleUnavailable(f"initialising a token through PKCS#11: {done.answer['error']}")
        info = done.answer["token"]
        return Token(self.library(), info["label"], user_pin, done.answer["slot"], self.env(), info)

    def token_slot(self) -> int | None:
        """The slot to initialise (None: the first slot holding an uninitialised token)."""
        return None

    def stop(self) -> None:
        for d in reversed(self.daemons):
            d.stop(timeout=10)
        self.daemons.clear()

    def teardown(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def facts(self) -> list[str]:
        """How the module was run here (daemons, isolation), for the report."""
        return []

    def diagnose(self, token: Token) -> list[str]:
        """Measured findings beyond the checks (e.g. why Barbican cannot initialise it)."""
        return []

    # -- helpers for subclasses ---------------------------------------------------------
    def daemon(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        """Start a daemon in the foreground of its own process group, log in the workdir."""
        owner = psutil.Process()
        marker = f"{_MARKER_PREFIX}{owner.pid}:{owner.create_time():.2f}"
        proc = ManagedProcess(name, argv, self.workdir / f"{name}.log",
                              env={**os.environ, **(env or {}), RUN_MARKER: marker}, cwd=self.workdir)
        proc.start()
        self.daemons.append(proc)
        return proc

    # -- the whole life cycle --------------------------------------------------------------
    @contextlib.contextmanager
    def provision(self, label: str | None = None) -> Iterator[Token]:
        """check, start, init_token; the module's env() is set in os.environ meanwhile (every
        child process that loads the module inherits it); always stop and tear down."""
        self.check()
        sweep_orphans()
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.start()
            self._apply_env(self.env())
            t0 = time.monotonic()
            token = self.init_token(label or f"qualify-{secrets.token_hex(3)}", new_pin(), new_pin())
            token.info["init_seconds"] = round(time.monotonic() - t0, 2)
            yield token
        finally:
            self._restore_env()
            self.stop()
            self.teardown()

    def _apply_env(self, env: dict[str, str]) -> None:
        for k, v in env.items():
            self._saved_env.setdefault(k, os.environ.get(k))
            os.environ[k] = v

    def _restore_env(self) -> None:
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env.clear()


def sweep_orphans() -> list[int]:
    """Stop token daemons whose owner process is gone (it was SIGKILLed mid-run)."""
    stopped = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            marker = p.environ().get(RUN_MARKER, "")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if not marker.startswith(_MARKER_PREFIX):
            continue
        pid, _, created = marker[len(_MARKER_PREFIX):].partition(":")
        try:
            owner = psutil.Process(int(pid))
            if abs(owner.create_time() - float(created)) < 1.0 and owner.status() != psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, ValueError):
            pass
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
            stopped.append(p.pid)
    return stopped


# --------------------------------------------------------------------------------------
# The child side: a token initialised through PKCS#11
# --------------------------------------------------------------------------------------


def _init_token_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from harness.qualify.module import RawModule, rv_name

    raw = RawModule(spec["module"])

    def step(what: str, rv: int) -> None:
        if rv != 0:
            raise _StepFailed(f"{what} returned {rv_name(rv)}")

    try:
        step("C_Initialize", raw.initialize(os_locking_ok=False))
        try:
            rv, slots = raw.slots(token_present=True)
            step("C_GetSlotList", rv)
            slot = spec.get("slot")
            if slot is None:
                fresh = [s for s in slots if not raw.token_info(s)[1]["initialized"]]
                if not fresh:
                    raise _StepFailed(f"no slot with an uninitialised token (slots: {slots})")
                slot = fresh[0]
            rv, info = raw.token_info(slot)
            step(f"C_GetTokenInfo(slot {slot})", rv)
            pins = [spec["so_pin"], spec["user_pin"]]
            if any(not info["min_pin"] <= len(p) <= (info["max_pin"] or 1 << 30) for p in pins):
                raise _StepFailed(f"the token takes PINs of {info['min_pin']}..{info['max_pin']} characters, "
                                  f"not {len(pins[0])}")
            factory = spec.get("factory_so_pin") or spec["so_pin"]
            step("C_InitToken", raw.init_token(slot, factory, spec["label"]))
            rv, session = raw.open_session(slot)
            step("C_OpenSession", rv)
            try:
                step("C_Login(CKU_SO)", raw.login(session, factory, user=0))
                if factory != spec["so_pin"]:
                    step("C_SetPIN(SO)", raw.set_pin(session, factory, spec["so_pin"]))
                step("C_InitPIN", raw.init_pin(session, spec["user_pin"]))
                step("C_Logout", raw.logout(session))
                step("C_Login(CKU_USER)", raw.login(session, spec["user_pin"]))
                step("C_Logout", raw.logout(session))
            finally:
                raw.close_session(session)
            rv, info = raw.token_info(slot)
            step("C_GetTokenInfo", rv)
        finally:
            raw.finalize()
    except _StepFailed as exc:
        return {"error": str(exc)}
    except OSError as exc:
        return {"error": f"cannot load {spec['module']}: {exc}"}
    return {"slot": slot, "token": {k: info[k] for k in ("label", "manufacturer", "model", "serial", "firmware",
                                                         "min_pin", "max_pin")}}


class _StepFailed(Exception):
    pass


if __name__ == "__main__":
    import sys

    sys.exit(serve({"init-token": _init_token_worker}, "harness.qualify.provision.base"))
