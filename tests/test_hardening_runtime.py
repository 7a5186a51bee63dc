"""Hardening at run time (issue #17, items 4-6): payload bytes nobody can rebuild, PINs on
no command line, private run directories, and bounds on every wait of the shim, the proxy
and the image builder. Each test here failed on the code before its fix."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from harness.context import EnvSecrets, RunContext
from harness.topology import load_topology
from tests.conftest import topology

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
T = 5.0  # s, every socket operation


# -- item 4: load payloads come from a cryptographic source, never from the seed ----------------

def _locust_rng_payloads(seed: int, user_class: str, users: int, draws: int, size: int) -> set[str]:
    """What the locustfile's seeded stream would give as payloads (the code before #17):
    random.Random(f"{seed}:{worker}:{class}:{user number}").randbytes(size), per draw."""
    from harness.ledger import sha256

    out = set()
    for user in range(users):
        rng = random.Random(f"{seed}:0:{user_class}:{user}")
        out |= {sha256(rng.randbytes(size)) for _ in range(draws)}
    return out


@pytest.mark.integration
@pytest.mark.xdist_group("load")
def test_load_payloads_differ_under_one_seed_and_cannot_be_rebuilt_from_it(env_of):
    from harness.ledger import Ledger
    from harness.load_driver.driver import DEFAULT_WEIGHTS, run_load

    env = env_of("pkcs11-softhsm")
    env.reload_state()
    seed = 4242
    weights = {**{k: 0 for k in DEFAULT_WEIGHTS}, "store_get": 1}
    runs = []
    for _ in range(2):
        result = run_load(env, users=2, spawn_rate=2, duration=4, seed=seed, weights=weights, fixtures=(0, 0),
                          check_ledger=False)
        assert json.loads((result.out_dir / "result.json").read_text())["params"]["seed"] == seed
        made = {e.sha256 for e in Ledger(result.out_dir / "ledger").entries() if e.op == "create" and e.outcome == "ok"}
        assert len(made) >= 4, f"too few secrets stored to judge: {len(made)}"
        runs.append(made)
    # Two runs with the same printed seed stored no payload twice ...
    assert not runs[0] & runs[1], f"{len(runs[0] & runs[1])} payload(s) repeated under seed {seed}"
    # ... and none of them is what the seed's stream gives.
    rebuilt = _locust_rng_payloads(seed, "StoreGet", users=4, draws=500, size=32)
    assert not (runs[0] | runs[1]) & rebuilt, "payloads rebuilt from the printed seed"


# -- item 5: PINs never on a command line; run directories private -----------------------------

class CmdlineWatch(threading.Thread):
    """Reads every /proc/*/cmdline (what `ps` shows any user) until stopped; remembers the
    command lines that contain one of `needles`, and whether it saw the token being
    initialised (the new way or softhsm2-util) at all."""

    def __init__(self, needles: list[str]):
        super().__init__(daemon=True)
        self.needles = [n.encode() for n in needles]
        self.halt = threading.Event()
        self.hits: list[str] = []
        self.saw_init = False

    def run(self) -> None:
        while not self.halt.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                self.saw_init |= b"C_InitToken" in cmdline or b"--init-token" in cmdline
                if any(n in cmdline for n in self.needles):
                    self.hits.append(cmdline.replace(b"\0", b" ").decode(errors="replace")[:300])

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.halt.set()
        self.join(10)


def _softhsm_ctx(run_dir: Path) -> RunContext:
    secrets = EnvSecrets()
    # Long, distinctive PINs: a hit cannot be a coincidence.
    secrets.hsm_pin, secrets.hsm_so_pin = "pin" + os.urandom(8).hex(), "so" + os.urandom(8).hex()
    return RunContext("pin-watch", run_dir, load_topology(topology("pkcs11-softhsm")), secrets)


@pytest.mark.skipif(not os.path.exists(SOFTHSM) and os.environ.get("CI", "").lower() != "true",
                    reason="SoftHSM2 not installed")
def test_local_softhsm_token_is_initialised_with_no_pin_on_any_command_line(tmp_path):
    from harness.services.softhsm import SoftHSM

    ctx = _softhsm_ctx(tmp_path)
    hsm = SoftHSM(ctx)
    hsm.check()
    with CmdlineWatch([ctx.secrets.hsm_pin, ctx.secrets.hsm_so_pin]) as watch:
        hsm.prepare()
        time.sleep(0.2)
    assert watch.saw_init, "the watcher never saw the initialising process: the test proves nothing"
    assert not watch.hits, f"a PIN on a command line: {watch.hits}"
    # The token is there and takes the PIN (through the environment, as Barbican gets it).
    check = subprocess.run(
        [sys.executable, "-c", "import os, pkcs11; t = pkcs11.lib(os.environ['LIB']).get_token(token_label='barbican');"
         "t.open(user_pin=os.environ['PIN']).close(); print('ok')"],
        env={**os.environ, **hsm.env(), "LIB": SOFTHSM, "PIN": ctx.secrets.hsm_pin},
        capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() == "ok", check.stderr


@pytest.mark.integration
@pytest.mark.xdist_group("docker")
def test_docker_softhsm_token_is_initialised_with_no_pin_on_any_command_line(docker_client, tmp_path):
    from harness import images
    from harness.providers.docker import Runtime, remove_labelled
    from harness.providers.docker.hsm import DockerSoftHSM

    ctx = _softhsm_ctx(tmp_path / "run")
    ctx.run_dir.mkdir()
    rt = Runtime(ctx)
    rt.images.update(images.ensure(rt.client, ["python"]))
    try:
        hsm = DockerSoftHSM(rt)
        with CmdlineWatch([ctx.secrets.hsm_pin, ctx.secrets.hsm_so_pin]) as watch:
            hsm.prepare()
            time.sleep(0.2)
        assert watch.saw_init, "the watcher never saw the initialising process: the test proves nothing"
        assert not watch.hits, f"a PIN on a command line: {watch.hits}"
        assert "token initialised" in (ctx.logs_dir / "softhsm-init.log").read_text()
    finally:
        remove_labelled(docker_client, ctx.run_id)


def test_run_directories_are_private(tmp_path):
    from harness.environment import make_run_dir

    old = os.umask(0o022)
    try:
        run_dir = make_run_dir(tmp_path / "reports" / "runs" / "r1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700


# -- item 6: the shim's store lock is bounded as a whole, and remembers a timeout ---------------

SHIM_CHILD = textwrap.dedent(r'''
    import json, os, sys, threading, time
    from cffi import FFI
    ffi = FFI()
    ffi.cdef("typedef unsigned long CK_ULONG; CK_ULONG C_Initialize(void *); CK_ULONG C_Finalize(void *);"
             "CK_ULONG C_GetSlotList(unsigned char, CK_ULONG *, CK_ULONG *);")
    lib = ffi.dlopen(os.environ["SHIM_LIB"])
    assert lib.C_Initialize(ffi.NULL) == 0
    print("ready", flush=True)
    sys.stdin.readline()                      # the parent now holds the lock and is stopped

    def slots(out, i):
        t0 = time.monotonic()
        lib.C_GetSlotList(1, ffi.NULL, ffi.new("CK_ULONG *"))
        out[i] = time.monotonic() - t0

    def burst(n):
        out = [None] * n
        ts = [threading.Thread(target=slots, args=(out, i)) for i in range(n)]
        t0 = time.monotonic()
        for t in ts: t.start()
        for t in ts: t.join()
        return time.monotonic() - t0, out

    first, each = burst(4)
    second, _ = burst(4)                      # right after: the timeout is remembered
    print(json.dumps({"first": first, "each": each, "second": second}), flush=True)
    os._exit(0)
''')

HOLDER = "import fcntl, os, signal, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); " \
         "print('held', flush=True); os.kill(os.getpid(), signal.SIGSTOP)"


@pytest.mark.skipif(not os.path.exists(SOFTHSM) and os.environ.get("CI", "").lower() != "true",
                    reason="SoftHSM2 not installed")
def test_shim_store_lock_waits_one_bound_for_all_threads_behind_a_stopped_holder(tmp_path):
    from harness import shim

    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    lock = tmp_path / "store.lock"
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "SHIM_LIB": shim.library_path(),
           **shim.env(SOFTHSM, store_lock=lock)}
    child = subprocess.Popen([sys.executable, "-c", SHIM_CHILD], env=env, text=True, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    holder = None
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        child.stdin.write("go\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=90)
    finally:
        for p in (child, holder):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait(10)
    times = json.loads(out.strip().splitlines()[-1])
    print(f"4 threads behind a stopped holder: {times}")
    bound = 5.0  # STORE_LOCK_WAIT_NS
    assert bound - 0.5 <= times["first"] < bound + 2.5, times   # one bound, not 4 x 5 s
    assert times["second"] < 1.0, times                          # the timeout was remembered
    assert "still held after 5 s" in err, err


# -- item 6: a toxic that raises closes its connection (both sockets) and says so ---------------

def test_a_failing_toxic_closes_both_sockets_and_is_logged(monkeypatch, caplog):
    import socketserver

    from harness.proxy import ServerThread, toxics
    from harness.services.proxy import toxiproxy_client

    class Bug(RuntimeError):
        pass

    async def broken(self, chunk, emit):
        raise Bug("a bug in a toxic")

    monkeypatch.setattr(toxics.Latency, "data", broken)
    upstream_closed = threading.Event()

    class Echo(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.settimeout(3 * T)
            try:
                while data := self.request.recv(65536):
                    self.request.sendall(data)
            except OSError:
                pass
            upstream_closed.set()

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with caplog.at_level(logging.ERROR, logger="harness.proxy"), ServerThread(seed=1) as proxy_server:
            client = toxiproxy_client(proxy_server.url, timeout=T)
            proxy = client.create(upstream=f"127.0.0.1:{server.server_address[1]}", name="buggy")
            proxy.add_toxic(type="latency", stream="upstream", attributes={"latency": 10})
            host, _, port = proxy.listen.rpartition(":")
            with socket.create_connection((host, int(port)), timeout=T) as s:
                s.sendall(b"ping")
                try:
                    got = s.recv(100)          # EOF (or a reset) once the link is closed
                except socket.timeout:
                    pytest.fail("the client's socket stayed open after its toxic failed")
                except ConnectionResetError:
                    got = b""
                assert got == b""
            assert upstream_closed.wait(T), "the upstream socket stayed open after the toxic failed"
            assert any("a toxic failed" in r.getMessage() and r.exc_info and r.exc_info[0] is Bug
                       for r in caplog.records), [r.getMessage() for r in caplog.records]
    finally:
        server.shutdown()
        server.server_close()


# -- item 6: the image builder's commands time out even when they print nothing ----------------

def test_image_build_command_times_out_when_silent(tmp_path):
    from harness import images
    
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(images.ImageBuildError, match="sleep"):
        images._run(["sleep", "60"], lines.append, "sleep", timeout=2)
    assert time.monotonic() - started < 15
