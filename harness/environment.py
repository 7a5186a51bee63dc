"""The Environment API: one object per running Barbican environment, whatever the provider.

    with Environment.up("environments/simple-crypto.yaml") as env:
        client = env.barbican(role="member", node="barbican-2")

`up` validates the topology and checks every dependency before anything starts, writes
the state file as services start (so `down` works after a crash), seeds Keystone, proves
each node can really store and read a secret, and writes clouds.yaml and openrc files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import secrets as _rand
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness import identity
from harness.context import EnvSecrets, RunContext
from harness.errors import EnvironmentNotFound, HarnessError, RunNotUp, ServiceStartError
from harness.ports import port_is_free
from harness.procs import is_running, log_tail
from harness.progress import Progress
from harness.providers import provider_class
from harness.target import Capability, Facets, Traits, traits_of
from harness.topology import Topology, load_topology
from harness.wait import wait_until

STATE_FILE = "state.json"
SECRETS_FILE = "secrets.json"


def reports_dir() -> Path:
    return Path(os.environ.get("BARBICAN_HARNESS_REPORTS", "reports")).resolve()


def runs_dir() -> Path:
    return reports_dir() / "runs"


RUN_ID_FORM = "a directory name under reports/runs/ (letters, digits, '.', '_', '-'; no '/', no '..')"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def checked_run_id(run_id: str | None, what: str = "run id") -> str | None:
    """A run id as a person typed it (a command's argument): only the name of a directory
    directly under runs_dir(), so that no command reads, heals or writes a report anywhere
    else (`report ../../../etc`). None stays None (the command's default run)."""
    if run_id is None:
        return None
    text = str(run_id)
    if not _RUN_ID.match(text) or ".." in text:
        raise HarnessError(f"{what} '{text}': a run id is {RUN_ID_FORM}, e.g. simple-crypto-20260101-120000-ab12")
    return text


def make_run_dir(path: Path, exist_ok: bool = False) -> Path:
    """A run directory, readable by its owner only: its logs and state name refs, user and
    project ids (and its secrets file sits there). mkdir's mode is masked by the umask,
    hence the chmod."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=exist_ok)
    os.chmod(path, 0o700)
    return path


def new_run_id(topology: Topology) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{topology.name}-{stamp}-{_rand.token_hex(2)}"


@dataclass(frozen=True)
class Node:
    name: str
    url: str


class Environment:
    def __init__(self, ctx: RunContext, provider=None, state: dict | None = None):
        self.ctx = ctx
        self.provider = provider
        self.state: dict = state or {}
        self.credentials = identity.seeded_credentials(
            ctx.secrets.user_password, ctx.secrets.admin_password, ctx.secrets.barbican_service_password)
        self._sessions: dict[str, object] = {}
        self._facets: Facets | None = None
        self._offline = False  # see offline()
        self._state_inode: int | None = None  # the state file as this object last read or wrote it

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def up(cls, topology: str | Path | Topology, *, progress: Progress | None = None,
           provider: str | None = None, run_id: str | None = None,
           keep_on_failure: bool = False, barbican: str | None = None,
           barbican_overrides: dict | None = None) -> "Environment":
        """`topology`: a topology file, or a Topology already built (a test's or a campaign's).
        `barbican`: the Barbican build to run (harness.builds.sources), instead of the
        topology's `barbican.source` (default: the harness's own release).
        `barbican_overrides`: config changes every Barbican process starts with (the keys of
        BarbicanConfig.render's overrides, e.g. {"keks": []}: no kek line at all)."""
        from harness.builds import parse_source, resolve

        # The topology's file, if it has one: its relative `barbican.source` paths start
        # there (a Topology built in code starts them in the working directory).
        topology_file = None if isinstance(topology, Topology) else Path(topology).resolve()
        if topology_file is not None:
            topology = load_topology(topology)   # errors name the file as the user gave it
        if provider:
            topology = topology.model_copy(update={"provider": provider})
        progress = progress or Progress()
        provider_cls = provider_class(topology.provider)
        # The build: parsed before anything starts (a missing file or commit is one line),
        # installed once per machine; its canonical source is what the state records.
        text, base = (barbican, None) if barbican else (topology.barbican.source,
                                                         (topology_file.parent if topology_file else Path.cwd()))
        source = parse_source(text, base, "--barbican" if barbican else f"{topology_file or 'topology'}: barbican.source") \
            if text else None
        if source is not None:
            topology = topology.model_copy(update={"barbican": topology.barbican.model_copy(
                update={"source": source.spec})})
            with progress.step(f"Barbican build {source.spec} (venv, installed once per machine)"):
                build = resolve(source)
        else:
            build = resolve(None)
        run_id = run_id or new_run_id(topology)
        run_dir = runs_dir() / run_id
        secrets = EnvSecrets().register()
        ctx = RunContext(run_id, run_dir, topology, secrets, build=build)
        env = cls(ctx, state={
            "run_id": run_id, "run_dir": str(run_dir), "topology_path": str(topology_file) if topology_file else None,
            "topology": topology.model_dump(), "provider": topology.provider, "status": "starting",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        })
        env.provider = provider_cls(ctx, on_change=env.save_state)
        for service in (*env.provider.nodes, *env.provider.workers) if barbican_overrides else ():
            service.overrides = dict(barbican_overrides)
        env.provider.check()  # missing packages are reported before anything is written or started
        make_run_dir(run_dir)
        secrets.save(run_dir / SECRETS_FILE)
        env.save_state()
        try:
            env.provider.up(progress, seed_identity=env._seed_identity)
            with progress.step("readiness: store+get on every node and store"):
                env.verify_ready()
            with progress.step(f"every node runs Barbican {build.label} (GET /?build)"):
                env.check_build()
            env._write_client_files()
            env.state["status"] = "up"
            env.state["timings"] = progress.timings
            env.save_state()
        except BaseException as exc:
            # Nothing is left behind, whatever went wrong (Ctrl-C included), unless a
            # person asked to keep a failed environment to debug it (`down` removes it).
            if keep_on_failure and not isinstance(exc, KeyboardInterrupt):
                env.state["status"] = "failed"
                env.save_state()
            else:
                env.down()
            raise
        return env

    @classmethod
    def attach(cls, run: str | Path | None = None) -> "Environment":
        """An environment started earlier (by this or another process), from its state file."""
        run_dir = find_run_dir(run)
        from harness.builds import Build

        state = json.loads((run_dir / STATE_FILE).read_text())
        topology = Topology.model_validate(state["topology"])
        secrets = EnvSecrets.load(run_dir / SECRETS_FILE)
        build = Build.from_state(state["build"]) if state.get("build") else None
        ctx = RunContext(state["run_id"], run_dir, topology, secrets, ports=dict(state.get("ports", {})), build=build)
        env = cls(ctx, state=state)
        env.provider = provider_class(state.get("provider", "local"))(ctx, on_change=env.save_state)
        env.provider.adopt(state.get("processes", []), state.get("overrides", {}))
        env._saw_state()
        return env

    def __enter__(self) -> "Environment":
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    # -- state ----------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.ctx.run_id

    @property
    def run_dir(self) -> Path:
        return self.ctx.run_dir

    @property
    def name(self) -> str:
        return f"{self.run_id} ({self.ctx.topology.provider} provider)"

    # -- is it up? --------------------------------------------------------------------------
    def why_not_up(self) -> str | None:
        """None when the run is up: its state says so and its own services (database,
        Keystone, proxy ...) still run; else why not, in a few words."""
        status = self.state.get("status")
        if status != "up":
            return f"its state is '{status}'"
        stopped = self.provider.stopped_services() if self.provider is not None else []
        if stopped:
            return f"{', '.join(stopped)} not running"
        return None

    def require_up(self, what: str) -> None:
        """Refuse, before anything changes, a command that acts on a run that is not up."""
        why = self.why_not_up()
        if why:
            raise RunNotUp(f"{what}: run '{self.run_id}' is not up ({why}); nothing was changed. "
                           f"`barbican-harness down {self.run_id}` cleans it up, `barbican-harness up TOPOLOGY` "
                           "brings up a new one")

    @contextlib.contextmanager
    def offline(self):
        """Facets that never start anything (a heal on a run that is down: configs are
        rewritten, nodes stay stopped)."""
        self._offline, self._facets = True, None
        try:
            yield self
        finally:
            self._offline, self._facets = False, None

    # -- capabilities (harness.target) -----------------------------------------------------
    @property
    def _facet_table(self) -> Facets:
        if self._facets is None:
            from harness.providers.facets import provider_facets

            self._facets = Facets(self.name, provider_facets(self.provider, offline=self._offline))
        return self._facets

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self._facet_table.capabilities

    def facet(self, capability: Capability, what: str = "this"):
        self._follow_state()
        return self._facet_table.get(capability, what)

    def _follow_state(self) -> None:
        """Before acting on the run: when another harness process wrote its state file
        since this one last read or wrote it (`heal` or a fault restarted a node), adopt
        what it recorded. Acting on the old records would signal a dead process: a pause
        of a node whose old process is an unreaped zombie signals nothing at all."""
        try:
            now = (self.run_dir / STATE_FILE).stat().st_ino
        except OSError:
            return
        if self._state_inode is not None and now != self._state_inode:
            self.reload_state()

    def _saw_state(self) -> None:
        with contextlib.suppress(OSError):
            self._state_inode = (self.run_dir / STATE_FILE).stat().st_ino  # every write is a new file

    @property
    def traits(self) -> Traits:
        return traits_of(self)

    def pytest_args(self) -> list[str]:
        return ["--barbican-run", str(self.run_dir)]

    foreign = False  # the harness made it: faults need no permission beyond the command

    def environ(self, **extra: str) -> dict:
        """The environment for a process working on this target (carries the run marker)."""
        return self.ctx.environ(**extra)

    def facts(self) -> dict:
        """What reports say about the target."""
        from harness.targets import barbican_build

        nodes = self.nodes
        build = barbican_build(self.session(), nodes[0].url) if nodes else "unknown"
        return {"run_id": self.run_id, "target": "harness environment", "topology": self.ctx.topology.name,
                "provider": self.state.get("provider", "local"), "backends": list(self.backends),
                "policy": self.policy, "barbican_version": build,
                "nodes": [{"name": n.name, "url": n.url} for n in nodes], "keystone_url": self.keystone_url}

    def save_state(self) -> None:
        if self.provider is not None:
            # One record per process name: a restarted service replaces its old record.
            live = {rec.name: rec.to_dict() for rec in self.provider.records()}
            merged = {r["name"]: r for r in self.state.get("processes", [])}
            merged.update(live)
            self.state["processes"] = list(merged.values())
            self.state["nodes"] = [{"name": n.name, "url": n.url} for n in self.provider.nodes]
            self.state["keystone_url"] = self.provider.keystone.url
            self.state["overrides"] = {n.name: n.overrides for n in self.provider.nodes if n.overrides}
            # During a rolling upgrade nodes run different builds.
            self.state["node_builds"] = {n.name: n.build.source for n in self.provider.nodes if n.build}
        self.state["build"] = self.ctx.barbican_build.describe()
        self.state["ports"] = dict(self.ctx.ports)
        # One temporary file per writer: services start in parallel threads.
        tmp = self.run_dir / f"{STATE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.run_dir / STATE_FILE)
        self._saw_state()

    def reload_state(self) -> None:
        """Pick up what another harness process changed (a `heal` restarted a node)."""
        self._saw_state()
        self.state = json.loads((self.run_dir / STATE_FILE).read_text())
        if self.provider is not None:
            self.provider.readopt(self.state.get("processes", []), self.state.get("overrides", {}))

    @property
    def nodes(self) -> list[Node]:
        return [Node(n["name"], n["url"]) for n in self.state.get("nodes", [])]

    def node(self, name: str | int | None = None) -> Node:
        nodes = self.nodes
        if name is None:
            return nodes[0]
        if isinstance(name, int):
            return nodes[name - 1]
        for n in nodes:
            if n.name == name:
                return n
        raise HarnessError(f"no node '{name}' in {self.run_id}; nodes: {[n.name for n in nodes]}")

    @property
    def keystone_url(self) -> str:
        return self.state["keystone_url"]

    def processes(self) -> list[dict]:
        """Every recorded process with whether it still runs."""
        return [{**p, "running": is_running(p["pid"], p["create_time"])} for p in self.state.get("processes", [])]

    # -- what the suites need to know about a target (harness.target.Target) ---------------
    @property
    def policy(self) -> str:
        return self.ctx.topology.policy

    @property
    def backends(self) -> list[str]:
        """Backend of each secret store; the first is the global default."""
        stores = sorted(self.ctx.topology.stores, key=lambda s: not s.global_default)
        return [s.backend for s in stores]

    @property
    def roles(self) -> list[str]:
        return sorted(self.credentials)

    @property
    def async_orders(self) -> bool:
        return self.ctx.topology.async_orders

    def dependency_endpoints(self) -> dict[str, tuple[str, int]]:
        """Dependencies triage probes by a TCP connect (the queue, the KMIP server), on
        their own ports: not through the fault proxy, which is Barbican's view of them."""
        from harness.services.links import HOST, link_upstreams

        wanted = {"queue": "queue", "kmip": "kmip"}
        ports = self.state.get("ports") or self.ctx.ports
        return {name: (HOST, int(ports[key])) for link, key in link_upstreams(self.ctx.topology).items()
                if (name := wanted.get(link)) and key in ports}

    # -- clients --------------------------------------------------------------------------
    @property
    def writer_role(self) -> str:
        """The plain role that may create secrets: Barbican's legacy policy (its effective
        default) wants `creator`; secure RBAC wants `member`."""
        return "member" if self.ctx.topology.policy == "secure-rbac" else "creator"

    def fresh_project(self, role: str | None = None) -> str:
        """Make a new project with one user (the writer role by default); returns the
        role key to pass to session()/barbican()."""
        tag = _rand.token_hex(3)
        cred = identity.make_project_user(self.keystone_url, self.credentials["cloud-admin"],
                                          role or self.writer_role, self.ctx.secrets.user_password, tag)
        self.credentials[cred.role] = cred
        return cred.role

    def session(self, role: str | None = None):
        role = role or self.writer_role
        if role not in self.credentials:
            raise HarnessError(f"unknown role '{role}'; roles: {sorted(self.credentials)}")
        if role not in self._sessions:
            self._sessions[role] = identity.session_for(self.keystone_url, self.credentials[role])
        return self._sessions[role]

    def renew_sessions(self) -> None:
        """New tokens from here on (each session authenticates again on its next request)."""
        self._sessions.clear()

    def barbican(self, role: str | None = None, node: str | int | None = None, microversion: str | None = None):
        """A python-barbicanclient Client acting as `role` against one node."""
        from barbicanclient import client as bclient

        kwargs = {"microversion": microversion} if microversion else {}
        return bclient.Client(session=self.session(role), endpoint=self.node(node).url, **kwargs)

    # -- steps of up ----------------------------------------------------------------------
    def _seed_identity(self) -> None:
        nodes = {n.name: n.url for n in self.provider.nodes}
        self.state["project_ids"] = identity.seed(self.provider.keystone.url, self.credentials, nodes)
        self.save_state()

    def verify_ready(self, timeout: float = 60.0, only: str | None = None) -> None:
        """/healthcheck is not enough (200 with a broken backend): store on each node (or on
        node `only`) and read back byte-identical through the next node; with async orders,
        a key order must go ACTIVE through the worker."""
        nodes = self.nodes
        for i, node in enumerate(nodes):
            if only and node.name != only:
                continue
            reader = nodes[(i + 1) % len(nodes)]
            payload = _rand.token_hex(16)

            def round_trip(node=node, reader=reader, payload=payload):
                secret = self.barbican(node=node.name).secrets.create(
                    name=f"readiness-{node.name}", payload=payload, payload_content_type="text/plain")
                ref = secret.store()
                got = self.barbican(node=reader.name).secrets.get(ref).payload
                self.barbican(node=node.name).secrets.delete(ref)
                return {"same": got == payload}

            done = wait_until(round_trip, timeout=timeout, interval=0.5, error=ServiceStartError,
                              what=f"{node.name}: store and read back through {reader.name}",
                              log=lambda node=node: log_tail(self.ctx.logs_dir / f"{node.name}-app.log", 15))
            if not done["same"]:
                raise ServiceStartError(f"{node.name}: stored secret read back different through {reader.name}")
        if self.ctx.topology.async_orders and not only:
            self._verify_order_active(timeout)

    def barbican_versions(self) -> dict[str, str]:
        """node → the Barbican version it says it runs (GET /?build, unauthenticated)."""
        import requests

        out = {}
        for node in self.nodes:
            try:
                r = requests.get(node.url + "/", params={"build": ""}, timeout=10)
                out[node.name] = r.json().get("build", f"HTTP {r.status_code}") if r.ok else f"HTTP {r.status_code}"
            except Exception as exc:  # noqa: BLE001 - reported as what the node answered
                out[node.name] = f"no answer ({type(exc).__name__})"
        return out

    def check_build(self) -> None:
        """Every node runs the build it was started from (its version; the state records
        the build's source and commit)."""
        got = self.barbican_versions()
        self.state["node_versions"] = got
        wanted = {n.name: (n.build or self.ctx.barbican_build).version for n in self.provider.nodes}
        wrong = {name: f"{got.get(name)} (expected {want})" for name, want in wanted.items() if got.get(name) != want}
        if wrong:
            raise ServiceStartError(f"nodes run another Barbican than their build: {wrong}")

    def _verify_order_active(self, timeout: float) -> None:
        client = self.barbican()
        order = client.orders.create_key(name="readiness-order", algorithm="aes", bit_length=256,
                                         mode="cbc", payload_content_type="application/octet-stream")
        ref = order.submit()
        status = {}

        def active():
            status["now"] = client.orders.get(ref)
            return status["now"].status == "ACTIVE"

        wait_until(active, timeout=timeout, interval=0.3, error=ServiceStartError,
                   what="readiness key order turns ACTIVE through barbican-worker",
                   gave_up=lambda: "the order went to ERROR" if getattr(status.get("now"), "status", "") == "ERROR"
                   else None,
                   log=lambda: log_tail(self.ctx.logs_dir / "barbican-worker-1.log", 15))
        # Legacy policy lets only a project admin delete orders.
        admin = self.barbican("admin")
        admin.secrets.delete(status["now"].secret_ref)
        admin.orders.delete(ref)

    def cloud_names(self) -> dict[str, dict[str, str]]:
        """Cloud name per role and node in clouds.yaml (node 'default' = the catalog's first)."""
        names: dict[str, dict[str, str]] = {}
        for role in self.credentials:
            names[role] = {"default": f"{self.run_id}-{role}"}
            for node in self.nodes:
                names[role][node.name] = f"{self.run_id}-{node.name}-{role}"
        return names

    def _write_client_files(self) -> None:
        clouds = {}
        for role, per_node in self.cloud_names().items():
            cred = self.credentials[role]
            for node, cloud in per_node.items():
                clouds[cloud] = {
                    "auth": {"auth_url": self.keystone_url, "username": cred.username,
                             "password": cred.password, "project_name": cred.project,
                             "user_domain_name": cred.domain, "project_domain_name": cred.domain},
                    "region_name": "RegionOne" if node == "default" else node,
                    "identity_api_version": 3, "interface": "public",
                }
        path = self.run_dir / "clouds.yaml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump({"clouds": clouds}, f, sort_keys=True)
        openrc_dir = self.run_dir / "openrc"
        openrc_dir.mkdir(exist_ok=True)
        for role, cred in self.credentials.items():
            fd = os.open(openrc_dir / role, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"# source me: act as '{role}' against {self.run_id}\n"
                        f"export OS_AUTH_URL={self.keystone_url}\nexport OS_USERNAME={cred.username}\n"
                        f"export OS_PASSWORD='{cred.password}'\nexport OS_PROJECT_NAME={cred.project}\n"
                        f"export OS_USER_DOMAIN_NAME={cred.domain}\nexport OS_PROJECT_DOMAIN_NAME={cred.domain}\n"
                        "export OS_IDENTITY_API_VERSION=3\nexport OS_REGION_NAME=RegionOne\n")
        self.state["clouds_yaml"] = str(path)
        self.state["openrc"] = str(openrc_dir)

    # -- teardown -------------------------------------------------------------------------
    def down(self, timeout: float = 10.0) -> list[int]:
        """Stop everything; idempotent. Returns the ports still busy afterwards (none expected)."""
        from harness.procs import stop_marked
        from harness.providers.local import stop_recorded

        self._heal_left_over_faults()
        if self.provider is not None:
            self.provider.down(timeout)
        stop_recorded(self.state.get("processes", []), timeout)
        # Anything started in the instant before a crash could record it.
        stray = stop_marked(self.run_id)
        if stray:
            self.state["stray_pids_stopped"] = stray
        self.state["status"] = "down"
        if self.run_dir.exists():
            self.save_state()
        ports = [p for rec in self.state.get("processes", []) for p in rec.get("ports", [])]
        return [p for p in ports if not port_is_free(p)]

    def _heal_left_over_faults(self) -> None:
        """`down` restores what a crashed run left injected (token snapshots, DB rows...)
        before it stops the services, as `heal` would; failures are recorded, not fatal."""
        from harness.faults.engine import FaultEngine

        if self.provider is None or self.state.get("status") not in ("up", "failed"):
            return
        engine = FaultEngine(self)
        if not engine.active():
            return
        try:
            self.state["healed_at_down"] = engine.heal_all()
        except Exception as exc:  # noqa: BLE001 - teardown goes on regardless
            self.state["heal_errors_at_down"] = str(exc)

    def summary(self) -> dict:
        """The one JSON document `up --json` and `status --json` print."""
        pids = {p["name"]: p["pid"] for p in self.state.get("processes", [])}
        return {
            "run_id": self.run_id, "run_dir": str(self.run_dir), "status": self.state.get("status"),
            "provider": self.state.get("provider"), "topology": self.ctx.topology.name,
            "build": self.state.get("build"),
            "keystone_url": self.state.get("keystone_url"), "clouds_yaml": self.state.get("clouds_yaml"),
            "clouds": self.cloud_names() if self.state.get("clouds_yaml") else {},
            "nodes": [{"name": n.name, "endpoint": n.url, "pid": pids.get(n.name)} for n in self.nodes],
            "pids": pids,
            "processes": self.processes(),
        }


def find_run_dir(run: str | Path | None) -> Path:
    """A run directory by id or path; None means the newest environment that is up."""
    if run is not None:
        # A bare id names a directory under runs_dir() only; a path (the Python API, the
        # pytest plugin's --barbican-run) is taken as it is.
        path_like = isinstance(run, Path) or os.sep in str(run)
        for candidate in ((Path(run),) if path_like else ()) + (runs_dir() / str(run),):
            if (candidate / STATE_FILE).is_file():
                return candidate.resolve()
        raise EnvironmentNotFound(f"no environment '{run}' (looked for {runs_dir() / str(run) / STATE_FILE})")
    live = []
    for state_file in runs_dir().glob(f"*/{STATE_FILE}"):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if state.get("status") in ("up", "starting", "failed"):
            live.append((state_file.stat().st_mtime, state_file.parent))
    if not live:
        raise EnvironmentNotFound(f"no environment is up under {runs_dir()}")
    return max(live)[1]
