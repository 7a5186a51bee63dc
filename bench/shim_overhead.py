"""Overhead of the PKCS#11 fault shim with no rule, per PKCS#11 call, against SoftHSM.

    python bench/shim_overhead.py [--iterations 500] [--barbican-pairs 40] [--module PATH] [--json]

One process loads SoftHSM twice over, the way Barbican does (cffi, symbols by name):
directly, and through the shim (which forwards to the very same SoftHSM instance). Every
iteration times each call once directly and once through the shim, in alternating
order, so both paths see the same token, sessions, keys and machine state. The shim runs
as in a harness run: with an (empty) control file, a statistics directory and, for
SoftHSM, the token-store lock (an uncontended flock around session/login/find calls).

Prints p50 and p95 per call for both paths and their ratios (shim / direct). The token
is a throw-away SoftHSM token in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"

CDEF = """
typedef unsigned long CK_ULONG;
typedef struct { CK_ULONG mechanism; void *pParameter; CK_ULONG ulParameterLen; } CK_MECHANISM;
typedef struct { CK_ULONG type; void *pValue; CK_ULONG ulValueLen; } CK_ATTRIBUTE;
CK_ULONG C_Initialize(void *);
CK_ULONG C_Finalize(void *);
CK_ULONG C_OpenSession(CK_ULONG, CK_ULONG, void *, void *, CK_ULONG *);
CK_ULONG C_CloseSession(CK_ULONG);
CK_ULONG C_Login(CK_ULONG, CK_ULONG, unsigned char *, CK_ULONG);
CK_ULONG C_GenerateKey(CK_ULONG, CK_MECHANISM *, CK_ATTRIBUTE *, CK_ULONG, CK_ULONG *);
CK_ULONG C_DestroyObject(CK_ULONG, CK_ULONG);
CK_ULONG C_EncryptInit(CK_ULONG, CK_MECHANISM *, CK_ULONG);
CK_ULONG C_Encrypt(CK_ULONG, unsigned char *, CK_ULONG, unsigned char *, CK_ULONG *);
CK_ULONG C_DecryptInit(CK_ULONG, CK_MECHANISM *, CK_ULONG);
CK_ULONG C_Decrypt(CK_ULONG, unsigned char *, CK_ULONG, unsigned char *, CK_ULONG *);
CK_ULONG C_WrapKey(CK_ULONG, CK_MECHANISM *, CK_ULONG, CK_ULONG, unsigned char *, CK_ULONG *);
CK_ULONG C_UnwrapKey(CK_ULONG, CK_MECHANISM *, CK_ULONG, unsigned char *, CK_ULONG,
                     CK_ATTRIBUTE *, CK_ULONG, CK_ULONG *);
CK_ULONG C_SignInit(CK_ULONG, CK_MECHANISM *, CK_ULONG);
CK_ULONG C_Sign(CK_ULONG, unsigned char *, CK_ULONG, unsigned char *, CK_ULONG *);
CK_ULONG C_GenerateRandom(CK_ULONG, unsigned char *, CK_ULONG);
"""

CKF_RW_SERIAL = 0x6
CKU_USER = 1
CKO_SECRET_KEY = 4
CKK_GENERIC_SECRET, CKK_AES = 0x10, 0x1F
CKA = {"CLASS": 0x0, "TOKEN": 0x1, "PRIVATE": 0x2, "KEY_TYPE": 0x100, "SENSITIVE": 0x103,
       "ENCRYPT": 0x104, "DECRYPT": 0x105, "WRAP": 0x106, "UNWRAP": 0x107, "SIGN": 0x108,
       "VERIFY": 0x10A, "VALUE_LEN": 0x161, "EXTRACTABLE": 0x162}
CKM_AES_KEY_GEN, CKM_AES_CBC, CKM_AES_KEY_WRAP_PAD = 0x1080, 0x1082, 0x210A
CKM_GENERIC_SECRET_KEY_GEN, CKM_SHA256_HMAC = 0x350, 0x251
CKR_OK, CKR_CRYPTOKI_ALREADY_INITIALIZED = 0, 0x191

ROWS = [
    ("open+login+close", "C_OpenSession+C_Login+C_CloseSession"),
    ("generate_key", "C_GenerateKey (AES-256 session key)"),
    ("encrypt", "C_Encrypt (AES-CBC, 1 KiB)"),
    ("decrypt", "C_Decrypt (AES-CBC, 1 KiB)"),
    ("wrap", "C_WrapKey (AES-KEY-WRAP-PAD)"),
    ("unwrap", "C_UnwrapKey (AES-KEY-WRAP-PAD)"),
    ("sign", "C_Sign (SHA256-HMAC, 64 B)"),
    ("random", "C_GenerateRandom (16 B)"),
]


class P11:
    """A PKCS#11 library called by symbol name through cffi (as Barbican does)."""

    def __init__(self, ffi, path: str):
        self.ffi = ffi
        self.lib = ffi.dlopen(path)
        self._keep: list = []

    def check(self, rv: int, what: str):
        if rv != CKR_OK:
            raise RuntimeError(f"{what} returned 0x{rv:X}")

    def template(self, items: dict[str, object]):
        attrs = self.ffi.new("CK_ATTRIBUTE[]", len(items))
        for i, (name, value) in enumerate(items.items()):
            if isinstance(value, bool):
                buf = self.ffi.new("unsigned char *", value)
                size = 1
            else:
                buf = self.ffi.new("CK_ULONG *", value)
                size = self.ffi.sizeof("CK_ULONG")
            self._keep.append(buf)
            attrs[i].type, attrs[i].pValue, attrs[i].ulValueLen = CKA[name], buf, size
        return attrs, len(items)

    def mechanism(self, mech: int, param: bytes | None = None):
        m = self.ffi.new("CK_MECHANISM *")
        m.mechanism = mech
        if param is not None:
            buf = self.ffi.new("unsigned char[]", param)
            self._keep.append(buf)
            m.pParameter, m.ulParameterLen = buf, len(param)
        return m


def make_token(work: Path, module: str) -> tuple[dict, int, str]:
    from harness.services.softhsm import INIT_TOKEN_SCRIPT, init_token_env

    (work / "tokens").mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {work / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    pin = secrets.token_hex(6)
    # Through PKCS#11 (C_InitToken): softhsm2-util would show the PINs on its command line.
    out = subprocess.run([sys.executable, "-c", INIT_TOKEN_SCRIPT],
                         env={**env, **init_token_env(module, "bench", pin, secrets.token_hex(6))},
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"initialising the bench token failed: {out.stderr.strip()}")
    slot = int(re.search(r"in slot (\d+)", out.stdout).group(1))
    return env, slot, pin


def percentile(values: list[int], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def measure(slot: int, pin: str, iterations: int, shim_path: str, real: str) -> dict:
    """Runs inside the child whose environment points SoftHSM and the shim at the token."""
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(CDEF)
    paths = {"direct": real, "shim": shim_path}
    libs = {name: P11(ffi, path) for name, path in paths.items()}
    direct = libs["direct"]
    direct.check(direct.lib.C_Initialize(ffi.NULL), "C_Initialize")
    rv = libs["shim"].lib.C_Initialize(ffi.NULL)      # same SoftHSM: already initialised
    if rv not in (CKR_OK, CKR_CRYPTOKI_ALREADY_INITIALIZED):
        raise RuntimeError(f"C_Initialize through the shim returned 0x{rv:X}")
    pin_b = pin.encode()
    samples: dict[str, dict[str, list[int]]] = {k: {"direct": [], "shim": []} for k, _ in ROWS}
    clock = time.perf_counter_ns

    def order(i: int):
        return ("direct", "shim") if i % 2 == 0 else ("shim", "direct")

    # 1. open + login + close: no other session may be open, or the token stays logged in
    h = ffi.new("CK_ULONG *")
    for i in range(iterations):
        for name in order(i):
            lib = libs[name].lib
            t0 = clock()
            r1 = lib.C_OpenSession(slot, CKF_RW_SERIAL, ffi.NULL, ffi.NULL, h)
            r2 = lib.C_Login(h[0], CKU_USER, pin_b, len(pin_b))
            r3 = lib.C_CloseSession(h[0])
            samples["open+login+close"][name].append(clock() - t0)
            if (r1, r2, r3) != (0, 0, 0):
                raise RuntimeError(f"open/login/close returned {r1:#x}/{r2:#x}/{r3:#x}")

    # 2. one logged-in session and the keys the other calls use
    direct.check(direct.lib.C_OpenSession(slot, CKF_RW_SERIAL, ffi.NULL, ffi.NULL, h), "open")
    session = h[0]
    direct.check(direct.lib.C_Login(session, CKU_USER, pin_b, len(pin_b)), "C_Login")
    aes_tpl = direct.template({"CLASS": CKO_SECRET_KEY, "KEY_TYPE": CKK_AES, "VALUE_LEN": 32,
                               "TOKEN": False, "PRIVATE": True, "SENSITIVE": False,
                               "EXTRACTABLE": True, "ENCRYPT": True, "DECRYPT": True,
                               "WRAP": True, "UNWRAP": True})
    hmac_tpl = direct.template({"CLASS": CKO_SECRET_KEY, "KEY_TYPE": CKK_GENERIC_SECRET,
                                "VALUE_LEN": 32, "TOKEN": False, "SIGN": True, "VERIFY": True})
    unwrap_tpl = direct.template({"CLASS": CKO_SECRET_KEY, "KEY_TYPE": CKK_AES, "TOKEN": False,
                                  "PRIVATE": True, "SENSITIVE": True, "EXTRACTABLE": True,
                                  "ENCRYPT": True, "DECRYPT": True})
    keygen = direct.mechanism(CKM_AES_KEY_GEN)
    key = ffi.new("CK_ULONG *")

    def generate(tpl, mech=keygen) -> int:
        direct.check(direct.lib.C_GenerateKey(session, mech, tpl[0], tpl[1], key), "C_GenerateKey")
        return key[0]

    kek, data_key = generate(aes_tpl), generate(aes_tpl)
    hmac_key = generate(hmac_tpl, direct.mechanism(CKM_GENERIC_SECRET_KEY_GEN))
    cbc = direct.mechanism(CKM_AES_CBC, os.urandom(16))
    wrap_mech = direct.mechanism(CKM_AES_KEY_WRAP_PAD)
    hmac_mech = direct.mechanism(CKM_SHA256_HMAC)
    plain = ffi.new("unsigned char[]", os.urandom(1024))
    cipher = ffi.new("unsigned char[1024]")
    back = ffi.new("unsigned char[1024]")
    wrapped = ffi.new("unsigned char[64]")
    sig = ffi.new("unsigned char[32]")
    rnd = ffi.new("unsigned char[16]")
    out_len = ffi.new("CK_ULONG *")
    direct.check(direct.lib.C_EncryptInit(session, cbc, data_key), "C_EncryptInit")
    out_len[0] = 1024
    direct.check(direct.lib.C_Encrypt(session, plain, 1024, cipher, out_len), "C_Encrypt")
    out_len[0] = 64
    direct.check(direct.lib.C_WrapKey(session, wrap_mech, kek, data_key, wrapped, out_len), "wrap")
    wrapped_len = out_len[0]

    for i in range(iterations):
        for name in order(i):
            lib = libs[name].lib
            t0 = clock()
            rv = lib.C_GenerateKey(session, keygen, aes_tpl[0], aes_tpl[1], key)
            samples["generate_key"][name].append(clock() - t0)
            direct.check(rv, "C_GenerateKey")
            direct.lib.C_DestroyObject(session, key[0])

            direct.check(lib.C_EncryptInit(session, cbc, data_key), "C_EncryptInit")
            out_len[0] = 1024
            t0 = clock()
            rv = lib.C_Encrypt(session, plain, 1024, cipher, out_len)
            samples["encrypt"][name].append(clock() - t0)
            direct.check(rv, "C_Encrypt")

            direct.check(lib.C_DecryptInit(session, cbc, data_key), "C_DecryptInit")
            out_len[0] = 1024
            t0 = clock()
            rv = lib.C_Decrypt(session, cipher, 1024, back, out_len)
            samples["decrypt"][name].append(clock() - t0)
            direct.check(rv, "C_Decrypt")

            out_len[0] = 64
            t0 = clock()
            rv = lib.C_WrapKey(session, wrap_mech, kek, data_key, wrapped, out_len)
            samples["wrap"][name].append(clock() - t0)
            direct.check(rv, "C_WrapKey")

            t0 = clock()
            rv = lib.C_UnwrapKey(session, wrap_mech, kek, wrapped, wrapped_len,
                                 unwrap_tpl[0], unwrap_tpl[1], key)
            samples["unwrap"][name].append(clock() - t0)
            direct.check(rv, "C_UnwrapKey")
            direct.lib.C_DestroyObject(session, key[0])

            direct.check(lib.C_SignInit(session, hmac_mech, hmac_key), "C_SignInit")
            out_len[0] = 32
            t0 = clock()
            rv = lib.C_Sign(session, plain, 64, sig, out_len)
            samples["sign"][name].append(clock() - t0)
            direct.check(rv, "C_Sign")

            t0 = clock()
            rv = lib.C_GenerateRandom(session, rnd, 16)
            samples["random"][name].append(clock() - t0)
            direct.check(rv, "C_GenerateRandom")

    direct.lib.C_CloseSession(session)
    direct.lib.C_Finalize(ffi.NULL)
    return samples


def barbican_store_get(pairs: int, rounds: int) -> dict:
    """Barbican store+get p50 on pkcs11-softhsm, SoftHSM loaded through the shim (no rule)
    vs directly, the two environments up side by side and measured in alternating rounds."""
    import statistics

    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from harness.environment import Environment

    base = yaml.safe_load((Path(__file__).resolve().parent.parent / "environments" / "pkcs11-softhsm.yaml").read_text())
    work = Path(tempfile.mkdtemp(prefix="shim-barbican-"))
    envs = {}
    try:
        for name, use_shim in (("shim", True), ("direct", False)):
            topo = {**base, "name": f"bench-{name}", "barbican": {"nodes": 1, "threads": 4},
                    "hsm": {**base["hsm"], "shim": use_shim}}
            (work / f"{name}.yaml").write_text(yaml.safe_dump(topo))
            envs[name] = Environment.up(work / f"{name}.yaml")
        samples = {name: [] for name in envs}
        for _ in range(rounds):
            for name, env in envs.items():
                client = env.barbican()
                for _ in range(pairs):
                    start = time.perf_counter()
                    ref = client.secrets.create(payload=os.urandom(32)).store()
                    client.secrets.get(ref).payload
                    samples[name].append((time.perf_counter() - start) * 1000)
        p50 = {name: statistics.median(v) for name, v in samples.items()}
        return {"pairs": pairs * rounds, "shim_p50_ms": p50["shim"], "direct_p50_ms": p50["direct"],
                "ratio_p50": p50["shim"] / p50["direct"]}
    finally:
        for env in envs.values():
            env.down()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--module", default=SOFTHSM, help="the real module (SoftHSM)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--barbican-pairs", type=int, default=40,
                        help="store+get pairs per round and environment (0: skip the Barbican part)")
    args = parser.parse_args(argv)

    if args.child:     # the measuring process: env already points at the token and shim
        spec = json.loads(args.child)
        samples = measure(spec["slot"], os.environ.pop("BENCH_PIN"), args.iterations,
                          spec["shim"], args.module)
        print(json.dumps(samples))
        return 0

    from harness import shim

    shim_path = shim.library_path()
    work = Path(tempfile.mkdtemp(prefix="p11shim-bench-"))
    try:
        env, slot, pin = make_token(work, args.module)
        ctl = shim.ShimControl(work / "control", work / "stats")
        ctl.clear(settle=False)            # a control file with no rule
        env.update(ctl.env(args.module))
        if shim.keeps_store_in_shared_files(args.module):
            # As the harness runs it with SoftHSM: token-store calls take the store lock.
            env["P11SHIM_STORE_LOCK"] = str(work / "store.lock")
        env["BENCH_PIN"] = pin
        child = subprocess.run(
            [sys.executable, __file__, "--iterations", str(args.iterations), "--module",
             args.module, "--child", json.dumps({"slot": slot, "shim": shim_path})],
            env=env, capture_output=True, text=True, timeout=3600)
        if child.returncode != 0:
            raise SystemExit(f"benchmark process failed:\n{child.stderr}")
        samples = json.loads(child.stdout)
        shim_calls = ctl.stats()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report = {}
    for key, label in ROWS:
        row = {}
        for path in ("direct", "shim"):
            row[f"{path}_p50_us"] = percentile(samples[key][path], 0.50) / 1000
            row[f"{path}_p95_us"] = percentile(samples[key][path], 0.95) / 1000
        row["ratio_p50"] = row["shim_p50_us"] / row["direct_p50_us"]
        row["ratio_p95"] = row["shim_p95_us"] / row["direct_p95_us"]
        row["added_p50_us"] = row["shim_p50_us"] - row["direct_p50_us"]
        report[label] = row

    barbican = barbican_store_get(args.barbican_pairs, 5) if args.barbican_pairs else None
    if args.json:
        print(json.dumps({"iterations": args.iterations, "rows": report, "barbican": barbican}, indent=2))
        return 0
    print(f"PKCS#11 fault shim overhead, no rule (control file + stats on), "
          f"{args.iterations} iterations, interleaved, module {args.module}")
    head = (f"{'call':40} {'direct p50':>11} {'p95':>9} {'shim p50':>10} {'p95':>9} "
            f"{'ratio p50':>10} {'p95':>6} {'added p50':>10}")
    print(head)
    print("-" * len(head))
    for label, r in report.items():
        print(f"{label:40} {r['direct_p50_us']:9.1f}us {r['direct_p95_us']:7.1f}us "
              f"{r['shim_p50_us']:8.1f}us {r['shim_p95_us']:7.1f}us "
              f"{r['ratio_p50']:10.3f} {r['ratio_p95']:6.3f} {r['added_p50_us']:8.2f}us")
    counted = shim_calls.get("C_Encrypt", {}).get("calls", 0)
    print(f"(shim statistics saw {counted} C_Encrypt calls; expected {args.iterations})")
    if barbican:
        print(f"\nBarbican store+get on pkcs11-softhsm ({barbican['pairs']} pairs each, alternating rounds): "
              f"shim p50 {barbican['shim_p50_ms']:.1f} ms, direct p50 {barbican['direct_p50_ms']:.1f} ms, "
              f"ratio {barbican['ratio_p50']:.3f} (target < 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
