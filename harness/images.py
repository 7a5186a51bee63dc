"""Container images of the Docker provider, built with no registry at all.

    barbican-harness images build [--air-gapped]      (also: python -m harness.images build)

Three images, tagged ``barbican-harness/<name>:<content hash>``:

  python    every Python role: Keystone, Barbican API nodes and worker, barbican-manage,
            the PyKMIP server, SoftHSM token set-up and the fault proxy (one pinned venv,
            as the local provider runs them all from one venv; SoftHSM and the PKCS#11
            fault shim, compiled in the image from harness/shim/p11shim.c, add ~15 MB).
            Of the harness it holds only the code containers run (container_modules()),
            so editing the rest of the harness does not rebuild it.
  mariadb   Debian's mariadb-server with the system tables made at build time
  rabbitmq  Debian's rabbitmq-server (async orders only)

The Dockerfiles are in environments/docker/ (``ARG BASE_IMAGE``, classic builder only).

Where things come from, so that nothing in a build needs the network:

* Base: ``python:3.11-slim-bookworm`` when it is present or can be pulled; otherwise
  (and always with ``--air-gapped``) a Debian bookworm made on this machine with
  debootstrap from the Debian mirror named in /etc/apt/sources.list* (bookworm's
  python3 is 3.11) and loaded with ``docker import``.
* Debian packages (air-gapped): downloaded on the host, from the same mirror, inside
  the very root filesystem the base was made from (chroot ``apt-get --download-only``),
  so the set is exactly what that base lacks; the build installs them from the
  context and runs with ``network_mode=none``.
* Python packages: a wheelhouse made on the host with ``pip download`` from
  ``pip freeze`` of the harness venv (the same pins), installed with
  ``pip install --no-index --find-links``.

Each tag is the hash of what went in: the Dockerfile, every context file (wheels and
.debs by name and size, the rest by content) and the base image id. A build whose tag
already exists does nothing, so `images build` twice in a row costs about a second.
Caches live in ~/.cache/barbican-harness/images (XDG_CACHE_HOME is honoured).
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness import procs
from harness.errors import HarnessError, MissingDependency
from harness.progress import Progress

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = REPO / "environments" / "docker"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "barbican-harness" / "images"

PREFIX = "barbican-harness"
IMAGES = ("python", "mariadb", "rabbitmq")
DEFAULT_BASE = "python:3.11-slim-bookworm"
SUITE = "bookworm"
# What the debootstrapped base holds besides minbase: Python 3.11 (bookworm's python3)
# with venv, CA certificates, and /etc/services & co. for the network libraries.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "netbase")
LABEL_IMAGE = f"{PREFIX}.image"
BUILD_TIMEOUT = 3600

Log = Callable[[str], None]


class ImageBuildError(HarnessError):
    """An image could not be built (the message holds the end of the build output)."""


# -- Docker daemon ---------------------------------------------------------------------

def daemon_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def docker_client(timeout: float = 120):
    """A docker SDK client, or a HarnessError that says which daemon was tried and how
    to point the harness at another one."""
    try:
        import docker
        import requests
    except ImportError as exc:  # pragma: no cover - docker is a pinned dependency
        raise HarnessError(f"the docker SDK is not installed ({exc}): pip install docker==7.2.0") from None
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise HarnessError(
            f"no Docker daemon reachable at {daemon_address()} ({exc}). Start dockerd, or set "
            "DOCKER_HOST to the daemon's address (e.g. DOCKER_HOST=unix:///var/run/docker.sock); "
            "a non-root user needs access to the socket (the 'docker' group).") from None
    return client


# -- small helpers -----------------------------------------------------------------------

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(name: str = "build") -> Iterator[None]:
    """One build at a time per machine (pytest-xdist workers all ask for the images)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(argv: list[str], log: Log, what: str, timeout: float = 1800, **kw) -> None:
    """Run a host command, streaming its output to `log` (harness.procs.run: a silent child
    times out too); raise ImageBuildError with its tail on failure."""
    procs.run(argv, timeout=timeout, what=what, stream=log, error=ImageBuildError, **kw)


# -- wheelhouse ---------------------------------------------------------------------------

def frozen_requirements(python: str = sys.executable, exclude: Iterable[str] = ()) -> list[str]:
    """A venv's pins (`pip freeze --all`), without the editable harness itself and the
    packages named in `exclude` (a Barbican build brings its own wheel)."""
    skip = {"barbican-harness", *(n.lower() for n in exclude)}
    out = procs.run([python, "-m", "pip", "freeze", "--all", "--exclude-editable"], timeout=120,
                    what="pip freeze", error=ImageBuildError)
    reqs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("-e "):
            continue
        name = re.split(r"\s*(?:==| @ )", line, maxsplit=1)[0].lower().replace("_", "-")
        if name in skip:
            continue
        if "==" not in line:
            raise ImageBuildError(f"cannot pin '{line}' from {python} for the image "
                                  "(only name==version requirements can go in the wheelhouse)")
        reqs.append(line)
    return sorted(reqs, key=str.lower)


def wheelhouse(log: Log, python: str = sys.executable, exclude: Iterable[str] = (),
               local_wheels: Iterable[Path] = ()) -> Path:
    """Wheels of every package pinned in the venv of `python` (but `exclude`), made on the
    host, plus `local_wheels` (a Barbican build's own); cached per pin set. Its
    requirements.txt names all of them, local wheels by NAME==VERSION."""
    reqs = frozen_requirements(python, exclude)
    local = sorted(local_wheels)
    text = "\n".join(reqs) + "\n"
    wanted = text + "".join(f"{w.name} {file_sha256(w)}\n" for w in local)
    path = CACHE / "wheelhouse" / _sha(wanted.encode())[:16]
    if (path / ".complete").is_file():
        return path
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "requirements.txt").write_text(text)
    # pip download keeps wheels as published (manylinux for CPython 3.11, matching the
    # image's Python); `pip wheel` turns any sdist into a wheel here, so the build never
    # compiles Python packages.
    _run([python, "-m", "pip", "download", "--no-deps", "-d", str(tmp), "-r", str(tmp / "requirements.txt")],
         log, "pip download (wheelhouse)")
    sdists = [p for p in tmp.iterdir() if p.suffix != ".whl" and p.name != "requirements.txt"]
    if sdists:
        _run([python, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp), *map(str, sdists)], log,
             "pip wheel (wheelhouse sdists)")
        for p in sdists:
            p.unlink()
    for w in local:
        shutil.copy2(w, tmp / w.name)
        name, version = w.name.split("-")[:2]
        text += f"{name}=={version}\n"
    (tmp / "requirements.txt").write_text(text)
    (tmp / ".complete").write_text(text)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


# -- Debian mirror and the debootstrapped base ----------------------------------------------

def _sources_entries() -> list[tuple[str, list[str]]]:
    """(URI, suites) of every Debian source this machine's apt knows."""
    entries: list[tuple[str, list[str]]] = []
    files = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":  # deb822
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    entries.append((uri, fields.get("suites", "").split()))
        elif f.suffix == ".list" or f.name == "sources.list":
            for line in text.splitlines():
                line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(line) >= 3 and line[0] == "deb":
                    entries.append((line[1], [line[2]]))
    return entries


def debian_mirror(suite: str = SUITE) -> str:
    """The Debian mirror to debootstrap from: BARBICAN_HARNESS_DEBIAN_MIRROR, else the
    machine's apt source that carries `suite` (the main archive, not -security/-updates)."""
    override = os.environ.get("BARBICAN_HARNESS_DEBIAN_MIRROR", "").strip()
    if override:
        return override
    entries = _sources_entries()
    for uri, suites in entries:
        if suite in suites and "security" not in uri:
            return uri.rstrip("/")
    for uri, suites in entries:
        if any(s.startswith(suite) for s in suites) and "security" not in uri:
            return uri.rstrip("/")
    raise HarnessError(f"no Debian {suite} mirror in /etc/apt/sources.list*: set "
                       "BARBICAN_HARNESS_DEBIAN_MIRROR (e.g. http://deb.debian.org/debian)")


def _base_spec() -> dict:
    return {"suite": SUITE, "variant": "minbase", "include": sorted(BASE_PACKAGES), "arch": _dpkg_arch()}


def _dpkg_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _rootfs_dir(spec_hash: str) -> Path:
    return CACHE / "rootfs" / spec_hash


def debootstrap_base(client, log: Log, progress: Progress) -> str:
    """A Debian bookworm base image made here (debootstrap + docker import). Returns its tag.
    The root filesystem is kept in the cache: air-gapped .deb sets are resolved in it."""
    spec = _base_spec()
    spec_hash = _sha(json.dumps(spec, sort_keys=True).encode())[:12]
    tag = f"{PREFIX}/base:{SUITE}-{spec_hash}"
    root = _rootfs_dir(spec_hash)
    if _image_exists(client, tag) and (root / ".complete").is_file():
        return tag
    if os.geteuid() != 0:
        raise HarnessError("making the base image with debootstrap needs root (it creates device "
                           "nodes and chroots); run `barbican-harness images build` as root once")
    debootstrap = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None)
    if not debootstrap:
        raise MissingDependency("debootstrap", "debootstrap", "needed to make the base image without a registry")
    mirror = debian_mirror()
    if not (root / ".complete").is_file():
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with progress.step(f"debootstrap {SUITE} from {mirror}"):
            _run([debootstrap, f"--variant={spec['variant']}", f"--arch={spec['arch']}",
                  "--include=" + ",".join(spec["include"]), "--components=main", SUITE, str(tmp), mirror],
                 log, "debootstrap", timeout=1800)
            # Like Debian's official images: no services from maintainer scripts, no
            # package cache or lists in the image.
            policy = tmp / "usr" / "sbin" / "policy-rc.d"
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for p in (tmp / d).glob("*"):
                    if p.is_file():
                        p.unlink()
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        (root / ".complete").write_text(json.dumps({**spec, "mirror": mirror}))
    with progress.step("docker import (base image)"):
        with tempfile.TemporaryDirectory(dir=CACHE) as td:
            tar = Path(td) / "rootfs.tar"
            excludes = ["./.complete", "./proc/*", "./sys/*", "./dev/*", "./var/lib/apt/lists/*",
                        "./var/cache/apt/*.bin", "./var/cache/harness-debs"]
            _run(["tar", "-C", str(root), "--numeric-owner", *[f"--exclude={e}" for e in excludes],
                  "-cf", str(tar), "."], log, "tar of the base root filesystem")
            client.api.import_image(
                src=str(tar), repository=f"{PREFIX}/base", tag=f"{SUITE}-{spec_hash}",
                changes=["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                         "ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]',
                         f"LABEL {LABEL_IMAGE}=base {PREFIX}.debian-suite={SUITE}"])
    return tag


def debs_for(packages: list[str], spec_hash: str, log: Log) -> Path:
    """Every .deb that `apt-get install --no-install-recommends PACKAGES` needs on the
    debootstrapped base, downloaded on the host inside that base's root filesystem."""
    root = _rootfs_dir(spec_hash)
    if not (root / ".complete").is_file():
        raise ImageBuildError(f"the base root filesystem {root} is missing; rebuild with --air-gapped")
    key = _sha(" ".join(sorted(packages)).encode())[:12]
    out = CACHE / "debs" / f"{spec_hash}-{key}"
    if (out / ".complete").is_file():
        return out
    inner = Path("/var/cache/harness-debs") / key
    target = root / inner.relative_to("/")
    shutil.rmtree(target, ignore_errors=True)
    (target / "partial").mkdir(parents=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C"}
    resolv = root / "etc" / "resolv.conf"
    if Path("/etc/resolv.conf").is_file():
        shutil.copyfile("/etc/resolv.conf", resolv)  # name resolution for the mirror
    lists = root / "var" / "lib" / "apt" / "lists"
    if not any(lists.glob("*Packages*")):
        _run(["chroot", str(root), "apt-get", "-q", "update"], log, "apt-get update (base root filesystem)", env=env)
    _run(["chroot", str(root), "apt-get", "install", "-y", "-q", "--download-only", "--no-install-recommends",
          "-o", f"Dir::Cache::Archives={inner}", *packages], log,
         f"apt-get --download-only {' '.join(packages)}", env=env)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in target.glob("*.deb"):
        shutil.copy2(deb, tmp / deb.name)
    shutil.rmtree(target, ignore_errors=True)
    (tmp / ".complete").write_text(" ".join(packages))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


# -- build contexts -----------------------------------------------------------------------

def _dockerfile(name: str) -> Path:
    return DOCKERFILES / f"{name}.Dockerfile"


def dockerfile_packages(text: str) -> dict[str, list[str]]:
    """{"build": [...], "runtime": [...]} from `ARG BUILD_PACKAGES="..."` lines."""
    found = {}
    for m in re.finditer(r'^ARG\s+(BUILD|RUNTIME)_PACKAGES="([^"]*)"', text, re.MULTILINE):
        found[m.group(1).lower()] = m.group(2).split()
    return found


#: Where containers enter harness code: the WSGI apps, the fault proxy and the shim.
CONTAINER_ENTRY_MODULES = ("harness.wsgi.barbican_api", "harness.wsgi.keystone_api",
                           "harness.proxy.__main__", "harness.shim")


def _module_file(module: str) -> Path | None:
    path = REPO.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def container_modules() -> list[Path]:
    """The harness files containers run: the entry modules and every harness module they
    import (found with ast, so the set follows the code). Only these go into the image,
    so editing any other part of the harness does not rebuild it."""
    seen: set[Path] = set()
    todo = list(CONTAINER_ENTRY_MODULES)
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages
        package = parts if path.name == "__init__.py" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] == "harness"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = package[:len(package) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] == "harness":
                    todo.append(base)
                    todo += [f"{base}.{a.name}" for a in node.names]  # names may be submodules
    return sorted(seen)


def _source_files() -> Iterator[tuple[str, Path]]:
    yield "p11shim.c", REPO / "harness" / "shim" / "p11shim.c"
    for path in container_modules():
        yield path.relative_to(REPO).as_posix(), path


@dataclass
class Context:
    """The files of one build context (archive name → host file) and their hash."""

    name: str
    files: dict[str, Path] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)

    def add(self, arcname: str, path: Path) -> None:
        self.files[arcname] = path

    def add_dir(self, arcname: str, directory: Path | None, suffix: str) -> None:
        """A directory of wheels or .debs (possibly empty)."""
        self.dirs.add(arcname)
        if directory is not None:
            for p in sorted(directory.iterdir()):
                if p.is_file() and (p.name.endswith(suffix) or p.name == "requirements.txt"):
                    self.files[f"{arcname}/{p.name}"] = p

    def content_hash(self, base_id: str) -> str:
        h = hashlib.sha256()
        h.update(f"base={base_id}\n".encode())
        for d in sorted(self.dirs):
            h.update(f"dir {d}\n".encode())
        for arc, path in sorted(self.files.items()):
            if arc.endswith((".whl", ".deb")):
                # The listing: versioned file names and sizes.
                h.update(f"{arc} {path.stat().st_size}\n".encode())
            else:
                h.update(f"{arc} {file_sha256(path)}\n".encode())
        return h.hexdigest()

    def write_tar(self, fileobj) -> None:
        with tarfile.open(fileobj=fileobj, mode="w") as tar:
            for d in sorted(self.dirs):
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            for arc, path in sorted(self.files.items()):
                info = tar.gettarinfo(str(path), arcname=arc)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0  # the classic builder hashes content + metadata for its cache
                if arc.endswith(".sh"):
                    info.mode = 0o755
                with open(path, "rb") as f:
                    tar.addfile(info, f)


def build_context(name: str, wheels: Path | None, debs: dict[str, Path | None]) -> Context:
    ctx = Context(name)
    dockerfile = _dockerfile(name)
    ctx.add("Dockerfile", dockerfile)
    ctx.add("apt-install.sh", DOCKERFILES / "apt-install.sh")
    for kind in ("build", "runtime"):
        ctx.add_dir(f"debs/{kind}", debs.get(kind), ".deb")
    if name == "python":
        ctx.add_dir("wheelhouse", wheels, ".whl")
        for arc, path in _source_files():
            ctx.add(arc, path)
    return ctx


# -- building -----------------------------------------------------------------------------

def _image_exists(client, ref: str) -> bool:
    import docker

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def _pull(client, ref: str, log: Log) -> bool:
    import docker

    repo, _, tag = ref.partition(":")
    try:
        client.images.pull(repo, tag=tag or "latest")
        return True
    except (docker.errors.APIError, docker.errors.DockerException) as exc:
        log(f"cannot pull {ref}: {str(exc).splitlines()[0][:200]}")
        return False


@dataclass
class BaseChoice:
    tag: str
    image_id: str
    air_gapped: bool
    spec_hash: str | None = None


STATE = CACHE / "last-build.json"


def choose_base(client, air_gapped: bool, log: Log, progress: Progress) -> BaseChoice:
    """--air-gapped: the debootstrapped base. Otherwise BARBICAN_HARNESS_BASE_IMAGE or
    python:3.11-slim-bookworm when present or pullable, else the debootstrapped base."""
    spec_hash = _sha(json.dumps(_base_spec(), sort_keys=True).encode())[:12]
    if not air_gapped:
        wanted = os.environ.get("BARBICAN_HARNESS_BASE_IMAGE", "").strip() or DEFAULT_BASE
        if _image_exists(client, wanted) or _pull(client, wanted, log):
            return BaseChoice(wanted, client.images.get(wanted).id, False)
        if wanted != DEFAULT_BASE:
            raise HarnessError(f"BARBICAN_HARNESS_BASE_IMAGE={wanted}: not present and cannot be pulled")
        log(f"{DEFAULT_BASE} is not available: making a Debian {SUITE} base with debootstrap")
    tag = debootstrap_base(client, log, progress)
    return BaseChoice(tag, client.images.get(tag).id, True, spec_hash)


def _build_one(client, name: str, ctx: Context, base: BaseChoice, tag: str, log: Log) -> str:
    buildargs = {"BASE_IMAGE": base.tag}
    with tempfile.TemporaryFile(dir=CACHE) as f:
        ctx.write_tar(f)
        f.seek(0)
        stream = client.api.build(
            fileobj=f, custom_context=True, tag=tag, buildargs=buildargs,
            pull=False, rm=True, forcerm=True, decode=True, timeout=BUILD_TIMEOUT,
            # Air-gapped: everything is in the context, and this proves it.
            network_mode="none" if base.air_gapped else None)
        tail: list[str] = []
        image_id = None
        for chunk in stream:
            if "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                raise ImageBuildError(f"building {tag} failed: {detail.strip()}\n" + "\n".join(tail[-25:]))
            text = chunk.get("stream")
            if text:
                for line in text.rstrip("\n").splitlines():
                    tail = (tail + [line])[-40:]
                    if line.startswith("Step ") or line.startswith("Successfully"):
                        log(f"{name}: {line}")
                    m = re.match(r"Successfully built ([0-9a-f]+)", line)
                    if m:
                        image_id = m.group(1)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = aux["ID"]
    if not image_id or not _image_exists(client, tag):
        raise ImageBuildError(f"building {tag}: the daemon reported no image\n" + "\n".join(tail[-25:]))
    return tag


@dataclass
class BuildResult:
    tags: dict[str, str]
    built: list[str]
    base: str
    air_gapped: bool
    seconds: float


def build(client=None, *, air_gapped: bool | None = False, names: Iterable[str] = IMAGES,
          progress: Progress | None = None, log: Log | None = None) -> BuildResult:
    """Make sure every image in `names` exists for the current sources; build what is missing.
    air_gapped=None reuses the base decision of the last build (what `ensure` does)."""
    progress = progress or Progress()
    log = log or (lambda line: None)
    client = client or docker_client()
    names = list(names)
    for n in names:
        if n not in IMAGES:
            raise HarnessError(f"unknown image '{n}'; images: {', '.join(IMAGES)}")
    start = time.monotonic()
    with _locked():
        if air_gapped is None:
            air_gapped = bool(_last_state().get("air_gapped", False))
        base = choose_base(client, air_gapped, log, progress)
        wheels = None
        if "python" in names:
            with progress.step("wheelhouse (pip download of the venv's pins)"):
                wheels = wheelhouse(log)
        tags: dict[str, str] = {}
        built: list[str] = []
        for name in names:
            text = _dockerfile(name).read_text()
            debs: dict[str, Path | None] = {}
            if base.air_gapped:
                for kind, packages in dockerfile_packages(text).items():
                    with progress.step(f"{name}: Debian packages for the {kind} stage ({' '.join(packages)})"):
                        debs[kind] = debs_for(packages, base.spec_hash, log)
            ctx = build_context(name, wheels, debs)
            tag = f"{PREFIX}/{name}:{ctx.content_hash(base.image_id)[:16]}"
            tags[name] = tag
            if _image_exists(client, tag):
                continue
            with progress.step(f"image {tag}"):
                _build_one(client, name, ctx, base, tag, log)
            built.append(name)
        _save_state({"air_gapped": base.air_gapped, "base": base.tag, "tags": {**_last_state().get("tags", {}), **tags}})
    return BuildResult(tags, built, base.tag, base.air_gapped, time.monotonic() - start)


def ensure(client=None, names: Iterable[str] = IMAGES, progress: Progress | None = None,
           log: Log | None = None) -> dict[str, str]:
    """The image tags for the current sources, building only what changed (the Docker
    provider calls this before an environment starts)."""
    return build(client, air_gapped=None, names=names, progress=progress, log=log).tags


def build_on(client, name: str, base_tag: str, wheels: Path, key: str, progress: Progress | None = None,
             log: Log | None = None) -> str:
    """An image FROM one of ours (`base_tag`) with environments/docker/<name>.Dockerfile and a
    wheelhouse: tagged barbican-harness/<name>:<content hash>, built only when missing,
    without network (everything is in the context). `prune` keeps the newest per `key`."""
    progress = progress or Progress()
    log = log or (lambda line: None)
    ctx = Context(name)
    ctx.add("Dockerfile", _dockerfile(name))
    ctx.add_dir("wheelhouse", wheels, ".whl")
    base = BaseChoice(base_tag, client.images.get(base_tag).id, air_gapped=True)
    tag = f"{PREFIX}/{name}:{ctx.content_hash(base.image_id)[:16]}"
    with _locked():
        if not _image_exists(client, tag):
            with progress.step(f"image {tag} (on {base_tag})"):
                _build_one(client, name, ctx, base, tag, log)
        state = _last_state()
        _save_state({**state, "tags": {**state.get("tags", {}), f"{name}:{key}": tag}})
    return tag


def _last_state() -> dict:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return {}


def _save_state(state: dict) -> None:
    STATE.parent.mkdir(parents=True, exist_ok=True)
    tmp = STATE.with_name(STATE.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(STATE)


def list_images(client) -> list[dict]:
    out = []
    for img in client.api.images(filters={"label": LABEL_IMAGE}):
        tags = [t for t in img.get("RepoTags") or [] if t != "<none>:<none>"]
        out.append({"tags": tags, "id": img["Id"].split(":")[-1][:12],
                    "image": (img.get("Labels") or {}).get(LABEL_IMAGE), "size_mb": round(img.get("Size", 0) / 2**20)})
    return out


def prune(client) -> list[str]:
    """Remove the harness's images other than those of the last build (and its base):
    older versions and old build stages (the newest build stage stays: it is the layer
    cache of the next python image build). Images a container still uses stay."""
    import docker

    state = _last_state()
    keep = set(state.get("tags", {}).values()) | {state.get("base")}
    found = client.api.images(filters={"label": LABEL_IMAGE})
    stages = sorted((i for i in found if (i.get("Labels") or {}).get(LABEL_IMAGE, "").endswith("-build")),
                    key=lambda i: i.get("Created", 0))
    keep_ids = {stages[-1]["Id"]} if stages else set()
    removed = []
    for img in found:
        if img["Id"] in keep_ids:
            continue
        tags = [t for t in img.get("RepoTags") or [] if t != "<none>:<none>"]
        try:
            if keep & set(tags):
                for tag in set(tags) - keep:  # an old tag of an image still current: untag
                    client.api.remove_image(tag)
                    removed.append(tag)
                continue
            client.api.remove_image(img["Id"], force=False)
            removed.append(", ".join(tags) or img["Id"].split(":")[-1][:12])
        except docker.errors.APIError:
            pass  # in use, or already gone with a parent
    return removed


# -- command line -------------------------------------------------------------------------

def _typer_app():
    import typer
    from rich.console import Console

    app = typer.Typer(help="Container images of the Docker provider (built without a registry).",
                      no_args_is_help=True, add_completion=False)
    console = Console(stderr=True, soft_wrap=True, highlight=False)

    @app.command("build")
    def build_cmd(air_gapped: bool = typer.Option(
                      False, "--air-gapped",
                      help="Base from debootstrap + docker import, Debian packages and wheels from the host; "
                           "the build runs without network (automatic when the base cannot be pulled)"),
                  image: list[str] = typer.Option([], "--image", help=f"Only these ({', '.join(IMAGES)})"),
                  verbose: bool = typer.Option(False, "-v", "--verbose", help="Show every build step")) -> None:
        """Build the images that are missing for the current sources; a rebuild with nothing
        changed does nothing."""
        from harness.progress import RichProgress

        def log(line: str) -> None:
            if verbose or line.startswith(tuple(f"{n}: Step" for n in IMAGES)) or line.startswith("cannot pull") \
                    or "debootstrap" in line:
                console.print(f"[dim]{line}[/dim]", markup=True)

        try:
            with RichProgress(console) as progress:
                result = build(air_gapped=air_gapped, names=image or IMAGES, progress=progress, log=log)
        except HarnessError as exc:
            console.print(f"[red]error:[/red] {exc}", markup=True)
            raise typer.Exit(2)
        for name, tag in result.tags.items():
            print(f"{name:<9} {tag}  ({'built' if name in result.built else 'up to date'})")
        print(f"base: {result.base}{' (air-gapped)' if result.air_gapped else ''}; {result.seconds:.1f} s")

    @app.command("list")
    def list_cmd() -> None:
        """The harness's images on this daemon."""
        try:
            client = docker_client()
        except HarnessError as exc:
            console.print(f"[red]error:[/red] {exc}", markup=True)
            raise typer.Exit(2)
        for img in list_images(client):
            print(f"{img['image']:<9} {' '.join(img['tags']) or '<untagged>'}  {img['id']}  {img['size_mb']} MB")

    @app.command("prune")
    def prune_cmd() -> None:
        """Remove older versions of the harness's images and old build stages (the newest
        build stage stays: it is the layer cache of the next python image build)."""
        try:
            removed = prune(docker_client())
        except HarnessError as exc:
            console.print(f"[red]error:[/red] {exc}", markup=True)
            raise typer.Exit(2)
        print("\n".join(f"removed {r}" for r in removed) or "nothing to remove")

    return app


def __getattr__(name: str):
    # `app` is built on first use, so importing harness.images needs neither typer nor docker.
    if name == "app":
        return _typer_app()
    raise AttributeError(name)


def main() -> None:
    _typer_app()()


if __name__ == "__main__":
    main()
