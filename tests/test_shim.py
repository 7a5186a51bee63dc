"""The PKCS#11 fault shim (harness/shim) against a real SoftHSM token.

Every PKCS#11 call runs in a child process: the shim reads P11SHIM_* when it first
loads the real module, and python-pkcs11 refuses a second initialisation in one process.
The children call the shim the way Barbican does (cffi, symbols by name) or through
python-pkcs11 (C_GetFunctionList). Each test gets its own token directory and control
file, both removed afterwards; no child outlives its test.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from harness import shim
from harness.services.softhsm import INIT_TOKEN_SCRIPT, init_token_env
from harness.shim import CKR, Rule, ShimControl

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
PIN = secrets.token_hex(4)      # a throw-away token's; children get it through their environment
SO_PIN = secrets.token_hex(4)

needs_softhsm = pytest.mark.skipif(    # never skipped under CI=true (`./run` installs SoftHSM)
    not os.path.exists(SOFTHSM) and os.environ.get("CI", "").lower() != "true",
    reason="SoftHSM2 not installed (apt-get install -y softhsm2)")


# -- a child process that drives the shim by symbol name, as Barbican does ----------------

DRIVER = textwrap.dedent(r'''
    import json, os, sys, threading, time
    from cffi import FFI
    ffi = FFI()
    ffi.cdef("""
        typedef unsigned long CK_ULONG;
        CK_ULONG C_Initialize(void *);
        CK_ULONG C_Finalize(void *);
        CK_ULONG C_GetInfo(void *);
        CK_ULONG C_GetSlotList(unsigned char, CK_ULONG *, CK_ULONG *);
        CK_ULONG C_OpenSession(CK_ULONG, CK_ULONG, void *, void *, CK_ULONG *);
        CK_ULONG C_CloseSession(CK_ULONG);
        CK_ULONG C_Login(CK_ULONG, CK_ULONG, unsigned char *, CK_ULONG);
        CK_ULONG C_Logout(CK_ULONG);
        CK_ULONG C_GenerateRandom(CK_ULONG, unsigned char *, CK_ULONG);
        typedef struct { void *create, *destroy, *lock, *unlock; CK_ULONG flags; void *reserved; }
            CK_C_INITIALIZE_ARGS;
        typedef struct { unsigned char major, minor; } CK_VERSION;
        typedef struct { unsigned char *name; CK_VERSION *list; CK_ULONG flags; } CK_INTERFACE;
        CK_ULONG C_GetInterfaceList(CK_INTERFACE *, CK_ULONG *);
        CK_ULONG C_GetInterface(unsigned char *, CK_VERSION *, CK_INTERFACE **, CK_ULONG);
    """)
    lib = ffi.dlopen(os.environ["SHIM_LIB"])
    SLOT = int(os.environ["SHIM_SLOT"])
    PIN = os.environ["SHIM_PIN"].encode()
    RW_SERIAL = 0x6          # CKF_RW_SESSION | CKF_SERIAL_SESSION
    sessions = []

    def open_session():
        h = ffi.new("CK_ULONG *")
        rv = lib.C_OpenSession(SLOT, RW_SERIAL, ffi.NULL, ffi.NULL, h)
        if rv == 0:
            sessions.append(h[0])
        return rv

    def random16(session):
        buf = ffi.new("unsigned char[16]")
        return lib.C_GenerateRandom(session, buf, 16)

    def one(cmd):
        if cmd == "init":
            return lib.C_Initialize(ffi.NULL)
        if cmd == "init_os_locking":     # what Barbican passes with os_locking_ok = True
            return lib.C_Initialize(ffi.new("CK_C_INITIALIZE_ARGS *", {"flags": 0x2}))
        if cmd == "finalize":
            return lib.C_Finalize(ffi.NULL)
        if cmd == "getinfo":
            return lib.C_GetInfo(ffi.new("unsigned char[256]"))
        if cmd == "open":
            return open_session()
        if cmd == "openclose":
            rv = open_session()
            if rv == 0:
                lib.C_CloseSession(sessions.pop())
            return rv
        if cmd == "login":
            return lib.C_Login(sessions[0], 1, PIN, len(PIN))
        if cmd == "loginlogout":
            rv = lib.C_Login(sessions[0], 1, PIN, len(PIN))
            if rv == 0:
                lib.C_Logout(sessions[0])
            return rv
        if cmd == "random":
            return random16(sessions[0])
        raise SystemExit("unknown command " + cmd)

    def threads(n, k, cmd):
        results = [None] * n
        def work(i):
            h = ffi.new("CK_ULONG *")
            assert lib.C_OpenSession(SLOT, RW_SERIAL, ffi.NULL, ffi.NULL, h) == 0
            results[i] = [random16(h[0]) if cmd == "random" else one(cmd) for _ in range(k)]
            lib.C_CloseSession(h[0])
        ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
        for t in ts: t.start()
        for t in ts: t.join()
        return [rv for r in results for rv in r]

    def interfaces():
        count = ffi.new("CK_ULONG *")
        rv1 = lib.C_GetInterfaceList(ffi.NULL, count)
        ifaces = ffi.new("CK_INTERFACE[4]")
        count[0] = 4
        rv2 = lib.C_GetInterfaceList(ifaces, count)
        pp = ffi.new("CK_INTERFACE **")
        rv3 = lib.C_GetInterface(ffi.NULL, ffi.NULL, pp, 0)
        ver = pp[0].list[0] if rv3 == 0 else None
        v30 = ffi.new("CK_VERSION *", {"major": 3, "minor": 0})
        rv4 = lib.C_GetInterface(b"PKCS 11", v30, pp, 0)
        return {"count_rv": rv1, "count": count[0], "list_rv": rv2,
                "name": ffi.string(ifaces[0].name).decode(),
                "get_rv": rv3, "version": [ver.major, ver.minor], "v30_rv": rv4}

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        t0 = time.monotonic()
        if words[0] == "quit":
            break
        if words[0] == "repeat":
            out = [one(words[2]) for _ in range(int(words[1]))]
        elif words[0] == "threads":
            out = threads(int(words[1]), int(words[2]), words[3])
        elif words[0] == "interfaces":
            out = interfaces()
        elif words[0] == "fork":
            pid = os.fork()
            if pid == 0:
                for _ in range(int(words[1])):
                    lib.C_GetInfo(ffi.new("unsigned char[256]"))
                # os._exit skips atexit/destructors: only the shim's stats thread,
                # restarted in this child, can write the child's file. Wait for it.
                mine = os.path.join(os.environ["P11SHIM_STATS_DIR"], f"{os.getpid()}.stats")
                want = "C_GetInfo %d " % int(words[1])
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    try:
                        if want in open(mine).read():
                            break
                    except FileNotFoundError:
                        pass
                    time.sleep(0.05)
                os._exit(0)
            os.waitpid(pid, 0)
            out = pid
        else:
            out = one(words[0])
        print(json.dumps({"out": out, "elapsed": time.monotonic() - t0}), flush=True)
''')


class Driver:
    """One child process; ``call("repeat 3 open")`` → (result, seconds)."""

    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER], env=env, text=True, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pid = self.proc.pid

    def call(self, command: str):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise AssertionError(f"driver died (exit {self.proc.returncode}) on {command!r}: "
                                 f"{self.proc.stderr.read()}")
        reply = json.loads(line)
        return reply["out"], reply["elapsed"]

    def close(self) -> str:
        """Ask the child to exit normally (atexit flush), return its stderr (once)."""
        if self.proc.stdin.closed:
            return ""
        try:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return err


# -- fixtures ---------------------------------------------------------------------------

@pytest.fixture
def hsm():
    """A fresh SoftHSM token `t` in its own directory; yields (workdir, conf env, slot)."""
    work = Path(tempfile.mkdtemp(prefix="p11shim-test-"))
    try:
        (work / "tokens").mkdir()
        conf = work / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {work / 'tokens'}\n"
                        "objectstore.backend = file\nlog.level = ERROR\n")
        base = {**os.environ, "SOFTHSM2_CONF": str(conf)}
        # Through PKCS#11 (C_InitToken): softhsm2-util would show the PINs on its command line.
        init = subprocess.run([sys.executable, "-c", INIT_TOKEN_SCRIPT], env={**base, **init_token_env(
            SOFTHSM, "t", PIN, SO_PIN)}, capture_output=True, text=True, timeout=60)
        assert init.returncode == 0, init.stderr
        slot = int(re.search(r"in slot (\d+)", init.stdout).group(1))
        yield work, base, slot
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def shimctl(hsm):
    work, _, _ = hsm
    return ShimControl(work / "control", work / "stats")


@pytest.fixture
def child_env(hsm, shimctl):
    """Environment of a child that loads the shim (in front of SoftHSM)."""
    _, base, slot = hsm
    return {**base, **shimctl.env(SOFTHSM), "SHIM_LIB": shim.library_path(),
            "SHIM_SLOT": str(slot), "SHIM_PIN": PIN}


@pytest.fixture
def driver(child_env):
    drivers: list[Driver] = []

    def start(extra: dict | None = None) -> Driver:
        d = Driver({**child_env, **(extra or {})})
        drivers.append(d)
        return d

    yield start
    for d in drivers:
        d.close()


def run_python(code: str, env: dict, timeout: float = 120) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- pure logic (no SoftHSM) ------------------------------------------------------------

def test_rule_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="CKR_NOPE"):
        Rule(fn="C_Login", rv="CKR_NOPE")
    with pytest.raises(ValueError, match="C_Nope"):
        Rule(fn="C_Nope")
    with pytest.raises(ValueError, match="probability"):
        Rule(probability=1.5)
    with pytest.raises(ValueError, match="count"):
        Rule(count=-1)
    with pytest.raises(ValueError, match="served by the shim"):
        Rule(fn="C_GetFunctionList", rv="CKR_DEVICE_ERROR")


def test_rule_lines_round_trip():
    rules = [Rule(fn="C_Decrypt", delay_ms=500, jitter_ms=100),
             Rule(fn="C_OpenSession", rv="CKR_SESSION_COUNT", probability=0.5, seed=3),
             Rule(fn="C_Login", rv="CKR_PIN_LOCKED", after=3, count=2),
             Rule(fn="C_GetSlotList", rv=0xE0), Rule(fn="*", rv=0x80000001)]
    lines = [r.to_line() for r in rules]
    assert lines[2] == "fn=C_Login rv=CKR_PIN_LOCKED after=3 count=2"
    assert lines[3] == "fn=C_GetSlotList rv=CKR_TOKEN_NOT_PRESENT"
    assert lines[4] == "fn=* rv=0x80000001"
    assert [Rule.parse(line).rv_code for line in lines] == [None, 0xB1, 0xA4, 0xE0, 0x80000001]
    assert Rule.parse("  # only a comment") is None


def test_stats_files_are_summed_and_reset(tmp_path):
    ctl = ShimControl(tmp_path / "control", tmp_path / "stats")
    (tmp_path / "stats" / "11.stats").write_text(
        "# p11shim-stats v1 pid=11 start_ns=5\nC_Login 3 1 900 1 CKR_PIN_LOCKED=1\n")
    (tmp_path / "stats" / "12.stats").write_text(
        "# p11shim-stats v1 pid=12 start_ns=6\nC_Login 2 0 100 0\n")
    assert ctl.stats()["C_Login"] == {"calls": 5, "errors": 1, "total_ns": 1000,
                                      "injected": 1, "rv": {"CKR_PIN_LOCKED": 1}}
    ctl.reset_stats()
    assert ctl.stats() == {}
    (tmp_path / "stats" / "12.stats").write_text(
        "# p11shim-stats v1 pid=12 start_ns=6\nC_Login 5 0 400 0\n")
    assert ctl.stats()["C_Login"]["calls"] == 3


# -- the built library -----------------------------------------------------------------

@pytest.mark.integration
def test_exports_every_pkcs11_symbol_and_no_python():
    lib = shim.library_path()
    defined = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True,
                             text=True, check=True).stdout
    exported = {line.split()[-1] for line in defined.splitlines()
                if line.split() and line.split()[-1].startswith("C_")}
    assert len(shim.FUNCTIONS) == 68
    assert exported == set(shim.FUNCTIONS) | {"C_GetInterface", "C_GetInterfaceList"}
    undefined = subprocess.run(["nm", "-D", "--undefined-only", lib], capture_output=True,
                               text=True, check=True).stdout
    assert not [s for s in undefined.split() if s.startswith("Py") or s.startswith("_Py")]


@pytest.mark.integration
def test_rv_table_matches_the_c_table():
    import ctypes

    lib = ctypes.CDLL(shim.library_path())
    out = ctypes.c_ulong()
    for name, value in CKR.items():
        assert lib.p11shim_rv_from_name(name.encode(), ctypes.byref(out)) == 0, name
        assert out.value == value, name
    assert lib.p11shim_rv_from_name(b"CKR_NOPE", ctypes.byref(out)) == -1


# -- against SoftHSM ---------------------------------------------------------------------

@pytest.mark.integration
@needs_softhsm
def test_passthrough_crypto_with_python_pkcs11(child_env, shimctl):
    result = run_python('''
        import json, os
        import pkcs11
        from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
        lib = pkcs11.lib(os.environ["SHIM_LIB"])
        token = lib.get_token(token_label="t")
        out = {}
        with token.open(rw=True, user_pin=os.environ["SHIM_PIN"]) as s:
            key = s.generate_key(KeyType.AES, 256, store=False,
                                 template={Attribute.EXTRACTABLE: True})
            iv = s.generate_random(128)
            ct = key.encrypt(b"x" * 100, mechanism_param=iv)
            out["cbc_pad"] = key.decrypt(ct, mechanism_param=iv) == b"x" * 100
            ct = key.encrypt(b"A" * 32, mechanism=Mechanism.AES_CBC, mechanism_param=iv)
            out["cbc"] = key.decrypt(ct, mechanism=Mechanism.AES_CBC, mechanism_param=iv) == b"A" * 32
            kek = s.generate_key(KeyType.AES, 256, store=False,
                                 capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP)
            wrapped = kek.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
            back = kek.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, wrapped,
                                  mechanism=Mechanism.AES_KEY_WRAP_PAD, store=False)
            ct = back.encrypt(b"y" * 48, mechanism_param=iv)
            out["unwrapped_same_key"] = key.decrypt(ct, mechanism_param=iv) == b"y" * 48
            hmac = s.generate_key(KeyType.GENERIC_SECRET, 256, store=False,
                                  mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                                  capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY)
            sig = hmac.sign(wrapped, mechanism=Mechanism.SHA256_HMAC)
            out["hmac_len"] = len(sig)
            out["hmac_ok"] = hmac.verify(wrapped, sig, mechanism=Mechanism.SHA256_HMAC)
            out["hmac_bad"] = hmac.verify(wrapped + b"!", sig, mechanism=Mechanism.SHA256_HMAC)
        print(json.dumps(out))
    ''', child_env)
    assert result == {"cbc_pad": True, "cbc": True, "unwrapped_same_key": True,
                      "hmac_len": 32, "hmac_ok": True, "hmac_bad": False}
    stats = shimctl.stats()       # the child has exited: its file is final
    for fn in ("C_Initialize", "C_OpenSession", "C_Login", "C_GenerateKey", "C_Encrypt",
               "C_Decrypt", "C_WrapKey", "C_UnwrapKey", "C_Sign", "C_Verify", "C_Finalize"):
        assert stats[fn]["calls"] >= 1, fn
        assert stats[fn]["injected"] == 0
    assert stats["C_Verify"]["rv"] == {"CKR_SIGNATURE_INVALID": 1}
    assert stats["C_Encrypt"]["total_ns"] > 0


@pytest.mark.integration
@needs_softhsm
def test_session_count_fault_then_heal(child_env, shimctl):
    code = '''
        import json, os, pkcs11
        token = pkcs11.lib(os.environ["SHIM_LIB"]).get_token(token_label="t")
        try:
            with token.open():
                print(json.dumps("ok"))
        except pkcs11.PKCS11Error as exc:
            print(json.dumps(type(exc).__name__))
    '''
    shimctl.set_rules([Rule(fn="C_OpenSession", rv="CKR_SESSION_COUNT")])
    assert run_python(code, child_env) == "SessionCount"
    shimctl.clear()
    assert run_python(code, child_env) == "ok"


@pytest.mark.integration
@needs_softhsm
def test_rules_apply_and_heal_in_a_running_process(driver, shimctl):
    d = driver()
    assert d.call("init")[0] == 0
    assert d.call("repeat 2 openclose")[0] == [0, 0]
    shimctl.set_rules([Rule(fn="C_OpenSession", rv="CKR_SESSION_COUNT")])
    assert d.call("repeat 3 openclose")[0] == [CKR["CKR_SESSION_COUNT"]] * 3
    shimctl.clear()
    assert d.call("repeat 2 openclose")[0] == [0, 0]
    shimctl.set_rules([Rule(fn="C_GetSlotList", rv=0xE0)])
    assert d.call("getinfo")[0] == 0          # other functions untouched
    # two rewrites in quick succession, same size: the second is still noticed
    for code in ("CKR_PIN_EXPIRED", "CKR_HOST_MEMORY", "CKR_PIN_EXPIRED"):
        shimctl.set_rules([Rule(fn="C_GetInfo", rv=code)])
        assert d.call("getinfo")[0] == CKR[code]


@pytest.mark.integration
@needs_softhsm
def test_probability_with_seed_fails_about_half_and_repeats(driver, shimctl):
    shimctl.set_rules([Rule(fn="C_OpenSession", rv="CKR_SESSION_COUNT",
                            probability=0.5, seed=12345)])
    runs = []
    for _ in range(2):
        d = driver()
        assert d.call("init")[0] == 0
        runs.append(d.call("repeat 200 openclose")[0])
    failures = sum(rv == CKR["CKR_SESSION_COUNT"] for rv in runs[0])
    assert set(runs[0]) <= {0, CKR["CKR_SESSION_COUNT"]}
    # Binomial(200, 0.5): sd 7.1; [60, 140] is +-5.7 sd (p < 1e-7), and with a fixed seed
    # the draw is the same on every run anyway.
    assert 60 <= failures <= 140, failures
    assert runs[0] == runs[1]          # same seed, same sequence, in each process


@pytest.mark.integration
@needs_softhsm
def test_after_and_count_are_exact(driver, shimctl):
    shimctl.set_rules([Rule(fn="C_Login", rv="CKR_PIN_LOCKED", after=3, count=2)])
    d = driver()
    assert d.call("init")[0] == 0
    assert d.call("open")[0] == 0
    locked = CKR["CKR_PIN_LOCKED"]
    assert d.call("repeat 8 loginlogout")[0] == [0, 0, 0, locked, locked, 0, 0, 0]
    d.close()
    stats = shimctl.stats()
    assert stats["C_Login"]["calls"] == 8
    assert stats["C_Login"]["injected"] == 2
    assert stats["C_Login"]["rv"] == {"CKR_PIN_LOCKED": 2}
    assert stats["C_Logout"]["calls"] == 6


@pytest.mark.integration
@needs_softhsm
def test_first_specific_rule_wins_over_star(driver, shimctl):
    shimctl.set_rules([Rule(fn="*", rv="CKR_DEVICE_ERROR"),
                       Rule(fn="C_Initialize"), Rule(fn="C_OpenSession"),
                       Rule(fn="C_CloseSession"),
                       Rule(fn="C_GenerateRandom", rv="CKR_DEVICE_REMOVED"),
                       Rule(fn="C_GenerateRandom", rv="CKR_GENERAL_ERROR")])
    d = driver()
    assert d.call("init")[0] == 0
    assert d.call("open")[0] == 0
    assert d.call("random")[0] == CKR["CKR_DEVICE_REMOVED"]
    assert d.call("getinfo")[0] == CKR["CKR_DEVICE_ERROR"]


@pytest.mark.integration
@needs_softhsm
def test_delay_is_added_and_can_precede_a_failure(driver, shimctl):
    d = driver()
    assert d.call("init")[0] == 0
    assert d.call("open")[0] == 0
    shimctl.set_rules([Rule(fn="C_GenerateRandom", delay_ms=300),
                       Rule(fn="C_GetInfo", delay_ms=200, jitter_ms=50, rv="CKR_DEVICE_ERROR")])
    shimctl.reset_stats()
    rv, elapsed = d.call("random")
    assert rv == 0 and elapsed >= 0.29
    rv, elapsed = d.call("getinfo")
    assert rv == CKR["CKR_DEVICE_ERROR"] and elapsed >= 0.145
    d.close()
    stats = shimctl.stats()
    assert stats["C_GetInfo"] == {"calls": 1, "errors": 1, "total_ns": 0, "injected": 1,
                                  "rv": {"CKR_DEVICE_ERROR": 1}}
    # the delay is not time spent in the module
    assert 0 < stats["C_GenerateRandom"]["total_ns"] < 250_000_000


@pytest.mark.integration
@needs_softhsm
def test_stats_add_up_over_two_processes(driver, shimctl):
    a, b = driver(), driver()
    for d in (a, b):
        assert d.call("init")[0] == 0
        assert d.call("open")[0] == 0
    assert a.call("repeat 30 random")[0] == [0] * 30
    assert b.call("repeat 20 random")[0] == [0] * 20
    a.close()
    b.close()
    per_process = shimctl.process_stats()
    assert {key.split(":")[0] for key in per_process} == {str(a.pid), str(b.pid)}
    stats = shimctl.stats()
    assert stats["C_GenerateRandom"]["calls"] == 50
    assert stats["C_OpenSession"]["calls"] == 2
    assert stats["C_Initialize"]["calls"] == 2
    shimctl.reset_stats()
    assert shimctl.stats() == {}


@pytest.mark.integration
@needs_softhsm
def test_threads_share_counters_without_races(driver, shimctl):
    shimctl.set_rules([Rule(fn="C_GenerateRandom", rv="CKR_DEVICE_ERROR", after=100, count=37)])
    d = driver()
    assert d.call("init_os_locking")[0] == 0
    results = d.call("threads 8 100 random")[0]
    assert len(results) == 800
    assert results.count(CKR["CKR_DEVICE_ERROR"]) == 37
    assert results.count(0) == 763
    d.close()
    stats = shimctl.stats()
    assert stats["C_GenerateRandom"]["calls"] == 800
    assert stats["C_GenerateRandom"]["injected"] == 37
    assert stats["C_OpenSession"]["calls"] == 8


@pytest.mark.integration
@needs_softhsm
def test_forked_child_writes_its_own_stats(driver, shimctl):
    d = driver()
    assert d.call("init")[0] == 0
    assert d.call("repeat 3 getinfo")[0] == [0, 0, 0]
    child_pid = d.call("fork 5")[0]
    assert d.call("repeat 2 getinfo")[0] == [0, 0]
    d.close()
    per_process = {key.split(":")[0]: funcs for key, funcs in shimctl.process_stats().items()}
    assert per_process[str(child_pid)]["C_GetInfo"]["calls"] == 5      # not 3 + 5
    assert "C_Initialize" not in per_process[str(child_pid)]
    assert per_process[str(d.pid)]["C_GetInfo"]["calls"] == 5
    assert shimctl.stats()["C_GetInfo"]["calls"] == 10


@pytest.mark.integration
@needs_softhsm
def test_interface_discovery_offers_the_wrapped_240_list(driver):
    d = driver()
    info = d.call("interfaces")[0]
    assert info == {"count_rv": 0, "count": 1, "list_rv": 0, "name": "PKCS 11",
                    "get_rv": 0, "version": [2, 40], "v30_rv": CKR["CKR_ARGUMENTS_BAD"]}


@pytest.mark.integration
@needs_softhsm
def test_bad_control_lines_are_skipped_with_a_warning(driver, shimctl):
    shimctl.control_path.write_text(
        "fn=C_GetInfo rv=CKR_NOT_A_CODE\n"
        "fn=C_GetInfo colour=blue\n"
        "fn=C_GetInfo rv=0x30   # a comment\n")
    d = driver()
    assert d.call("init")[0] == 0
    assert d.call("getinfo")[0] == 0x30
    err = d.close()
    assert "line 1" in err and "CKR_NOT_A_CODE" in err
    assert "line 2" in err and "colour=blue" in err


@pytest.mark.integration
@needs_softhsm
def test_missing_real_module_is_a_clear_error(driver):
    d = driver({"P11SHIM_MODULE": ""})
    assert d.call("init")[0] == CKR["CKR_GENERAL_ERROR"]
    assert "P11SHIM_MODULE is not set" in d.close()
    d = driver({"P11SHIM_MODULE": "/nonexistent/libnope.so"})
    assert d.call("init")[0] == CKR["CKR_GENERAL_ERROR"]
    assert "/nonexistent/libnope.so" in d.close()


@pytest.mark.integration
@needs_softhsm
@pytest.mark.skipif(not shutil.which("pkcs11-tool"), reason="OpenSC pkcs11-tool not installed")
def test_pkcs11_tool_lists_slots_through_the_shim(child_env, shimctl):
    out = subprocess.run(["pkcs11-tool", "--module", shim.library_path(), "-L"],
                         env=child_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.search(r"token label\s*:\s*t\b", out.stdout)
    mech = subprocess.run(["pkcs11-tool", "--module", shim.library_path(), "-M"],
                          env=child_env, capture_output=True, text=True, timeout=60)
    assert mech.returncode == 0 and "mechtype-0x210A" in mech.stdout    # AES_KEY_WRAP_PAD
    shimctl.set_rules([Rule(fn="C_GetSlotList", rv="CKR_DEVICE_ERROR")])
    out = subprocess.run(["pkcs11-tool", "--module", shim.library_path(), "-L"],
                         env=child_env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "CKR_DEVICE_ERROR" in out.stderr
    assert shimctl.stats()["C_GetSlotList"]["injected"] == 1


@pytest.mark.integration
@needs_softhsm
def test_barbican_pkcs11_class_through_the_shim(child_env, shimctl):
    """Barbican's own PKCS11 wrapper (cffi, by symbol) works through the shim, and sees
    injected codes as Barbican would log them."""
    pytest.importorskip("barbican.plugin.crypto.pkcs11")
    code = '''
        import json, os
        from barbican.common import exception
        from barbican.plugin.crypto import pkcs11
        p = pkcs11.PKCS11(library_path=os.environ["SHIM_LIB"],
                          login_passphrase=os.environ["SHIM_PIN"], token_labels=["t"],
                          encryption_mechanism="CKM_AES_CBC", hmac_mechanism="CKM_SHA256_HMAC",
                          key_wrap_mechanism="CKM_AES_KEY_WRAP_PAD", os_locking_ok=True)
        s = p.get_session()
        out = {}
        mkek = p.generate_key("CKK_AES", 32, "CKM_AES_KEY_GEN", s, key_label="mkek",
                              master_key=True, wrap=True)
        hmac = p.generate_key("CKK_GENERIC_SECRET", 32, "CKM_GENERIC_SECRET_KEY_GEN", s,
                              key_label="hmac", master_key=True, sign=True)
        pkek = p.generate_key("CKK_AES", 32, "CKM_AES_KEY_GEN", s, encrypt=True)
        wrapped = p.wrap_key(mkek, pkek, s)
        sig = p.compute_hmac(hmac, wrapped["wrapped_key"], s)
        p.verify_hmac(hmac, sig, wrapped["wrapped_key"], s)
        kek = p.unwrap_key("CKM_AES_KEY_WRAP_PAD", mkek, None, wrapped["wrapped_key"], s)
        ct = p.encrypt(kek, b"secret payload", s)
        out["roundtrip"] = p.decrypt("CKM_AES_CBC", pkek, ct["iv"], ct["ct"], s) == b"secret payload"
        with open(os.environ["P11SHIM_CONTROL"], "w") as f:    # a raw rule, written in-process
            f.write("fn=C_Encrypt rv=CKR_DEVICE_ERROR count=1\\n"
                    "fn=C_Sign rv=CKR_DEVICE_REMOVED count=1\\n")
        import time; time.sleep(0.2)
        try:
            p.encrypt(kek, b"x", s)
            out["fault"] = "none"
        except exception.P11CryptoPluginException as exc:
            out["fault"] = str(exc)
        # the failed call ended the operation in SoftHSM too: the next Init works
        out["encrypt_after"] = len(p.encrypt(kek, b"x", s)["ct"])
        try:
            p.compute_hmac(hmac, b"blob", s)
        except exception.P11CryptoPluginException as exc:
            out["sign_fault"] = str(exc)
        out["sign_after"] = len(p.compute_hmac(hmac, b"blob", s))
        p.return_session(s)
        p.finalize()
        print(json.dumps(out))
    '''
    result = run_python(code, child_env)
    assert result["roundtrip"] is True
    assert "0x30 CKR_DEVICE_ERROR" in result["fault"]
    assert result["encrypt_after"] == 16
    assert "CKR_DEVICE_REMOVED" in result["sign_fault"] and result["sign_after"] == 32
    stats = shimctl.stats()
    assert stats["C_WrapKey"]["calls"] == 2          # Barbican's length query + the wrap
    assert stats["C_Encrypt"]["injected"] == 1


# -- SoftHSM's token store across processes, and the shim's store lock ---------------------

LOGIN_LOOP = r'''
    import json, os, sys, time
    from cffi import FFI
    ffi = FFI()
    ffi.cdef("""typedef unsigned long CK_ULONG;
        CK_ULONG C_Initialize(void *); CK_ULONG C_Finalize(void *);
        CK_ULONG C_OpenSession(CK_ULONG, CK_ULONG, void *, void *, CK_ULONG *);
        CK_ULONG C_CloseSession(CK_ULONG);
        CK_ULONG C_Login(CK_ULONG, CK_ULONG, unsigned char *, CK_ULONG);""")
    lib = ffi.dlopen(os.environ["SHIM_LIB"])
    slot, pin = int(os.environ["SHIM_SLOT"]), os.environ["SHIM_PIN"].encode()
    lib.C_Initialize(ffi.NULL)
    end, n = time.monotonic() + float(sys.argv[1]), 0
    while time.monotonic() < end:      # what every Barbican request does: session + login
        h = ffi.new("CK_ULONG *")
        if lib.C_OpenSession(slot, 0x6, ffi.NULL, ffi.NULL, h) == 0:
            lib.C_Login(h[0], 1, pin, len(pin))
            lib.C_CloseSession(h[0])
            n += 1
    lib.C_Finalize(ffi.NULL)
    print(json.dumps({"logins": n}))
'''

FIND_TOKEN_LOOP = r'''
    import json, os, sys, time
    from cffi import FFI
    ffi = FFI()
    ffi.cdef("""typedef unsigned long CK_ULONG;
        typedef struct { unsigned char label[32]; unsigned char rest[176]; } CK_TOKEN_INFO;
        CK_ULONG C_Initialize(void *); CK_ULONG C_Finalize(void *);
        CK_ULONG C_GetSlotList(unsigned char, CK_ULONG *, CK_ULONG *);
        CK_ULONG C_GetTokenInfo(CK_ULONG, CK_TOKEN_INFO *);""")
    lib = ffi.dlopen(os.environ["SHIM_LIB"])
    end, n, missed = time.monotonic() + float(sys.argv[1]), 0, 0
    while time.monotonic() < end:      # what Barbican's PKCS11() does at start and on re-init
        assert lib.C_Initialize(ffi.NULL) == 0
        count = ffi.new("CK_ULONG *")
        lib.C_GetSlotList(1, ffi.NULL, count)
        ids = ffi.new("CK_ULONG[]", count[0])
        lib.C_GetSlotList(1, ids, count)
        labels = set()
        for i in range(count[0]):
            info = ffi.new("CK_TOKEN_INFO *")
            if lib.C_GetTokenInfo(ids[i], info) == 0:
                labels.add(bytes(info.label).decode().strip())
        n += 1
        missed += "t" not in labels
        lib.C_Finalize(ffi.NULL)
    print(json.dumps({"inits": n, "missed": missed}))
'''


def _token_lookups_while_two_processes_log_in(env: dict, seconds: float = 3.0) -> dict:
    children = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(LOGIN_LOOP), str(seconds)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        looked = run_python(FIND_TOKEN_LOOP.replace("sys.argv[1]", str(seconds)), env, timeout=60)
    finally:
        for c in children:
            out, err = c.communicate(timeout=60)
            assert c.returncode == 0, err
    return looked


@needs_softhsm
def test_softhsm_misses_its_token_during_logins_elsewhere_unless_the_store_lock_is_on(child_env, hsm):
    """SoftHSM 2.6.1 rewrites token.object on every C_Login; another process that runs
    C_Initialize + C_GetSlotList at that moment does not see the token (Barbican:
    "Token Labels not found", then a node that stays broken). The shim's store lock
    (P11SHIM_STORE_LOCK, set by the harness for SoftHSM) serialises those calls."""
    work, _, _ = hsm
    assert shim.keeps_store_in_shared_files(SOFTHSM)
    bare = _token_lookups_while_two_processes_log_in(child_env)
    locked = _token_lookups_while_two_processes_log_in({**child_env, "P11SHIM_STORE_LOCK": str(work / "store.lock")})
    print(f"token lookups while two processes log in: without the lock {bare}, with it {locked}")
    assert bare["missed"] > 0, f"SoftHSM no longer loses its token under concurrent logins: {bare}"
    assert locked["inits"] > 0 and locked["missed"] == 0, locked
