"""A Kolla-shaped Barbican deployment the harness did NOT start, laid out with plain Docker
SDK calls (not the harness's docker provider), for tests of `--deployment`.

    with KollaDeployment(workdir) as kolla:
        kolla.deployment_file, kolla.clouds_yaml, kolla.containers ...

On a private bridge network: MariaDB, Keystone (keystone-manage db_sync / bootstrap,
users made through keystoneclient), a Kolla-style bootstrap container for Barbican's
schema (barbican-manage db upgrade), and two API containers named like Kolla's
(`barbican_api`, `barbican_api_2`, behind a per-run prefix), each with its config at
/etc/barbican/barbican.conf inside the container, where Barbican finds it by default.
barbican_api logs to its output; barbican_api_2 logs to a file inside the container, as
Kolla does (/var/log/kolla/barbican/barbican-api.log). The images are the ones the
harness builds (barbican-harness/python and barbican-harness/mariadb); every config,
start command and user is written here.
"""

from __future__ import annotations

import io
import os
import secrets
import tarfile
import time
from pathlib import Path

import requests
import yaml
from cryptography.fernet import Fernet

from harness import images
from harness.ports import free_port

LABEL = "barbican-harness-test.kolla"
KEYSTONE_CONF = "/etc/keystone/keystone.conf"
BARBICAN_CONF = "/etc/barbican/barbican.conf"
BARBICAN_LOG_FILE = "/var/log/kolla/barbican/barbican-api.log"
SOFTHSM_LIB = "/usr/lib/softhsm/libsofthsm2.so"  # in the python image
ROLES = {  # the harness's role -> (user, project, Keystone role)
    "creator": ("project-a-creator", "project-a", "creator"),
    "other-creator": ("project-b-creator", "project-b", "creator"),
    "service": ("octavia", "service", "service"),
    "admin": ("project-a-admin", "project-a", "admin"),
}


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs = sorted({str(Path(p).parent).lstrip("/") for p in files})
        for d in dirs:
            parts = Path(d).parts
            for i in range(1, len(parts) + 1):
                name = "/".join(parts[:i])
                if name not in tar.getnames():
                    info = tarfile.TarInfo(name)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
        for path, (data, mode) in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _wait(check, timeout: float, what: str, container=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if container is not None:
            container.reload()
            if container.status == "exited":
                raise RuntimeError(f"{what}: container exited:\n{container.logs(tail=40).decode(errors='replace')}")
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - not yet
            last = exc
        time.sleep(0.5)
    tail = container.logs(tail=40).decode(errors="replace") if container is not None else ""
    raise RuntimeError(f"{what}: not within {timeout:.0f} s (last: {last})\n{tail}")


class KollaDeployment:
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tag = secrets.token_hex(3)
        self.prefix = f"kolla{self.tag}"
        self.client = images.docker_client()
        self.labels = {LABEL: self.tag}
        self.pw = {k: secrets.token_urlsafe(18) for k in
                   ("db_keystone", "db_barbican", "admin", "barbican_service", "users")}
        self.kek = Fernet.generate_key().decode()
        self.network = None
        self.containers: dict[str, object] = {}
        self.ports: dict[str, int] = {}
        self.bring_up_s: float | None = None

    # -- names -------------------------------------------------------------------------
    def name(self, service: str) -> str:
        """Kolla's container names, behind this deployment's prefix."""
        return f"{self.prefix}_{service}"

    @property
    def deployment_name(self) -> str:
        return f"kolla-{self.tag}"

    def node_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[f'barbican-{i}']}"

    # -- bring up / tear down --------------------------------------------------------------
    def __enter__(self) -> "KollaDeployment":
        start = time.monotonic()
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        self.bring_up_s = time.monotonic() - start
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        tags = images.ensure(self.client, names=("python", "mariadb"))
        self.python, self.mariadb_image = tags["python"], tags["mariadb"]
        self.network = self.client.networks.create(f"{self.prefix}_net", driver="bridge", labels=self.labels)
        self._mariadb()
        self._keystone()
        self._identity()
        self._barbican()
        self._files()

    def down(self) -> None:
        for c in self.client.containers.list(all=True, filters={"label": f"{LABEL}={self.tag}"}):
            try:
                c.remove(force=True)
            except Exception:  # noqa: BLE001 - removed already
                pass
        for n in [*self.client.networks.list(filters={"label": f"{LABEL}={self.tag}"}),
                  *self.client.volumes.list(filters={"label": f"{LABEL}={self.tag}"})]:
            try:
                n.remove()
            except Exception:  # noqa: BLE001
                pass

    def volume(self, purpose: str) -> str:
        """A named volume, as Kolla keeps a service's data and logs (not in the container's layer)."""
        return self.client.volumes.create(f"{self.prefix}_{purpose}", labels=self.labels).name

    def _create(self, service: str, image: str, command, *, alias: str, files: dict | None = None,
                ports: dict | None = None, environment: dict | None = None, volumes: dict | None = None):
        c = self.client.containers.create(
            image, command, name=self.name(service), hostname=alias, labels=self.labels,
            environment=environment or {}, ports=ports or {}, detach=True,
            volumes={name: {"bind": path, "mode": "rw"} for path, name in (volumes or {}).items()},
            network=self.network.name,
            networking_config={self.network.name: self.client.api.create_endpoint_config(aliases=[alias])})
        if files:
            c.put_archive("/", _tar(files))
        self.containers[service] = c
        return c

    def _mariadb(self) -> None:
        self.ports["mariadb"] = free_port()
        init = "".join(
            f"CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET utf8mb4;\n"
            f"CREATE USER IF NOT EXISTS '{db}'@'%' IDENTIFIED BY '{self.pw['db_' + db]}';\n"
            f"GRANT ALL PRIVILEGES ON {db}.* TO '{db}'@'%';\n" for db in ("keystone", "barbican"))
        c = self._create("mariadb", self.mariadb_image, [
            "mariadbd", "--no-defaults", "--datadir=/var/lib/harness-mariadb", "--user=root", "--port=3306",
            "--bind-address=0.0.0.0", "--socket=/run/mysqld/mysqld.sock", "--skip-name-resolve",
            "--init-file=/etc/kolla/mariadb/init.sql", "--innodb-buffer-pool-size=64M",
            "--max-connections=500", "--innodb-flush-log-at-trx-commit=2", "--innodb-log-file-size=16M"],
            alias="mariadb", files={"/etc/kolla/mariadb/init.sql": (init.encode(), 0o600)},
            volumes={"/var/lib/harness-mariadb": self.volume("mariadb")},  # filled from the image's datadir
            ports={"3306/tcp": ("127.0.0.1", self.ports["mariadb"])})
        c.start()

        def ready():
            import pymysql

            pymysql.connect(host="127.0.0.1", port=self.ports["mariadb"], user="barbican",
                            password=self.pw["db_barbican"], database="barbican", connect_timeout=2).close()
            return True

        _wait(ready, 120, "mariadb accepting the barbican user", c)

    def _keystone(self) -> None:
        self.ports["keystone"] = free_port()
        conf = (f"[DEFAULT]\nuse_stderr = true\n\n[database]\n"
                f"connection = mysql+pymysql://keystone:{self.pw['db_keystone']}@mariadb:3306/keystone\n\n"
                "[token]\nprovider = fernet\n\n[fernet_tokens]\nkey_repository = /etc/keystone/fernet-keys\n\n"
                "[credential]\nkey_repository = /etc/keystone/credential-keys\n\n"
                "[identity]\npassword_hash_rounds = 4\n\n[cache]\nenabled = true\nbackend = dogpile.cache.memory\n")
        uwsgi = ("[uwsgi]\nhttp-socket = 0.0.0.0:5000\nmodule = harness.wsgi.keystone_api:application\n"
                 "master = true\nprocesses = 1\nthreads = 8\nenable-threads = true\nlazy-apps = true\n"
                 "die-on-term = true\nneed-app = true\nadd-header = Connection: close\n")
        start = ("keystone-manage db_sync && "
                 "keystone-manage fernet_setup --keystone-user root --keystone-group root && "
                 "keystone-manage credential_setup --keystone-user root --keystone-group root && "
                 "touch /etc/keystone/.bootstrapped && exec uwsgi --ini /etc/keystone/keystone-uwsgi.ini")
        c = self._create("keystone", self.python, ["sh", "-c", start], alias="keystone",
                         environment={"OS_KEYSTONE_CONFIG_FILES": KEYSTONE_CONF},
                         files={KEYSTONE_CONF: (conf.encode(), 0o600),
                                "/etc/keystone/keystone-uwsgi.ini": (uwsgi.encode(), 0o644)},
                         ports={"5000/tcp": ("127.0.0.1", self.ports["keystone"])})
        c.start()
        self.keystone_url = f"http://127.0.0.1:{self.ports['keystone']}/v3"
        _wait(lambda: c.exec_run(["test", "-f", "/etc/keystone/.bootstrapped"]).exit_code == 0, 300,
              "keystone db_sync", c)
        rc, out = c.exec_run(
            ["keystone-manage", "bootstrap", "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
             "--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone",
             "--bootstrap-region-id", "RegionOne", "--bootstrap-public-url", self.keystone_url,
             "--bootstrap-internal-url", "http://keystone:5000/v3"],
            environment={"OS_BOOTSTRAP_PASSWORD": self.pw["admin"]})
        assert rc == 0, out.decode(errors="replace")[-2000:]
        _wait(lambda: requests.get(self.keystone_url, timeout=3).status_code == 200, 180, "keystone serving", c)

    def _identity(self) -> None:
        """Projects, roles, users and the key-manager endpoint, as an operator makes them."""
        from keystoneauth1 import session as ks_session
        from keystoneauth1.identity import v3
        from keystoneclient.v3 import client as ks_client

        admin = ks_session.Session(auth=v3.Password(
            auth_url=self.keystone_url, username="admin", password=self.pw["admin"], project_name="admin",
            user_domain_name="Default", project_domain_name="Default"), timeout=30)
        ks = ks_client.Client(session=admin)
        domain = ks.domains.find(name="Default")
        roles = {r.name: r for r in ks.roles.list()}
        for name in ("creator", "observer", "audit", "service", "member", "reader"):
            if name not in roles:
                roles[name] = ks.roles.create(name=name)
        projects = {name: ks.projects.create(name=name, domain=domain)
                    for name in ("project-a", "project-b", "service")}
        barbican = ks.users.create(name="barbican", domain=domain, password=self.pw["barbican_service"],
                                   default_project=projects["service"])
        for role in ("admin", "service"):
            ks.roles.grant(roles[role], user=barbican, project=projects["service"])
        for user, project, role in ROLES.values():
            u = ks.users.create(name=user, domain=domain, password=self.pw["users"], default_project=projects[project])
            ks.roles.grant(roles[role], user=u, project=projects[project])
        self.ports["barbican-1"], self.ports["barbican-2"] = free_port(), free_port()
        service = ks.services.create(name="barbican", type="key-manager")
        for interface in ("public", "internal", "admin"):
            ks.endpoints.create(service=service, url=self.node_url(1), interface=interface, region="RegionOne")

    def barbican_conf(self, i: int) -> str:
        log = (f"log_file = {BARBICAN_LOG_FILE}\nuse_stderr = false\n" if i == 2 else "use_stderr = true\n")
        return (
            "# Barbican API (Kolla-style), written by the test fixture\n"
            f"[DEFAULT]\nhost_href = {self.node_url(i)}\n{log}debug = false\ndb_auto_create = false\n\n"
            f"[database]\nconnection = mysql+pymysql://barbican:{self.pw['db_barbican']}@mariadb:3306/barbican\n"
            "max_pool_size = 10\nmax_overflow = 20\n\n"
            "[keystone_authtoken]\nwww_authenticate_uri = http://keystone:5000/v3\n"
            "auth_url = http://keystone:5000/v3\nauth_type = password\nusername = barbican\n"
            f"password = {self.pw['barbican_service']}\nproject_name = service\nuser_domain_name = Default\n"
            "project_domain_name = Default\nregion_name = RegionOne\nservice_token_roles_required = True\n\n"
            "[oslo_policy]\nenforce_new_defaults = False\nenforce_scope = False\n\n"
            "[secretstore]\nnamespace = barbican.secretstore.plugin\nenabled_secretstore_plugins = store_crypto\n\n"
            "[crypto]\nnamespace = barbican.crypto.plugin\nenabled_crypto_plugins = simple_crypto\n\n"
            f"[simple_crypto_plugin]\n# the deployment's master KEK\nkek = {self.kek}\n\n"
            "[queue]\nenable = False\n")

    UWSGI = ("[uwsgi]\nhttp-socket = 0.0.0.0:9311\nmodule = harness.wsgi.barbican_api:application\n"
             "master = true\nprocesses = 1\nthreads = 4\nenable-threads = true\nsingle-interpreter = true\n"
             "lazy-apps = true\ndie-on-term = true\nneed-app = true\nbuffer-size = 65535\n"
             "add-header = Connection: close\n")

    def _barbican(self) -> None:
        files = lambda i: {BARBICAN_CONF: (self.barbican_conf(i).encode(), 0o600),  # noqa: E731
                           "/etc/barbican/barbican-api-uwsgi.ini": (self.UWSGI.encode(), 0o644)}
        # Kolla's bootstrap container: the schema, once, before the API containers start.
        boot = self._create("barbican_bootstrap", self.python, ["barbican-manage", "db", "upgrade"],
                            alias="barbican-bootstrap", files=files(1))
        boot.start()
        result = boot.wait(timeout=300)
        assert result["StatusCode"] == 0, boot.logs().decode(errors="replace")[-3000:]
        boot.remove()
        self.containers.pop("barbican_bootstrap")
        start = f"mkdir -p {Path(BARBICAN_LOG_FILE).parent} && exec uwsgi --ini /etc/barbican/barbican-api-uwsgi.ini"
        for i, service in ((1, "barbican_api"), (2, "barbican_api_2")):
            c = self._create(service, self.python, ["sh", "-c", start], alias=f"barbican-api-{i}", files=files(i),
                             ports={"9311/tcp": ("127.0.0.1", self.ports[f"barbican-{i}"])},
                             volumes={"/var/log/kolla": self.volume(f"kolla_logs_{i}")})
            c.start()
        for i, service in ((1, "barbican_api"), (2, "barbican_api_2")):
            _wait(lambda: requests.get(self.node_url(i) + "/", timeout=3).status_code == 300, 240,
                  f"{service} serving", self.containers[service])

    def add_p11(self) -> Path:
        """A third Barbican container, `barbican_api_p11`: the p11_crypto plugin on a SoftHSM
        token inside the container (token, MKEK and HMAC key made by its start command, as a
        Kolla bootstrap would), its own database; a deployment file of its own."""
        from harness.services.softhsm import SOFTHSM_P11_OPTIONS

        rc, out = self.containers["mariadb"].exec_run(["mariadb", "-e", (
            "CREATE DATABASE IF NOT EXISTS barbican_p11 CHARACTER SET utf8mb4; "
            "GRANT ALL PRIVILEGES ON barbican_p11.* TO 'barbican'@'%';")])
        assert rc == 0, out
        self.ports["barbican-p11"] = free_port()
        self.pw["hsm_pin"] = "".join(secrets.choice("0123456789") for _ in range(8))
        url = f"http://127.0.0.1:{self.ports['barbican-p11']}"
        p11 = {"library_path": SOFTHSM_LIB, "token_labels": "barbican", "login": self.pw["hsm_pin"],
               "mkek_label": "barbican_mkek", "mkek_length": "32", "hmac_label": "barbican_hmac",
               **SOFTHSM_P11_OPTIONS}
        conf = (self.barbican_conf(1).replace(self.node_url(1), url).replace("@mariadb:3306/barbican\n",
                                                                             "@mariadb:3306/barbican_p11\n")
                .replace("enabled_crypto_plugins = simple_crypto", "enabled_crypto_plugins = p11_crypto")
                + "\n[p11_crypto_plugin]\n" + "".join(f"{k} = {v}\n" for k, v in p11.items()))
        # The SO PIN only sets the token up: an environment variable of the start command.
        # OpenSC's pkcs11-tool reads both PINs from the environment (env:VAR); softhsm2-util
        # would show them on its command line to anyone who lists processes.
        tool = f"pkcs11-tool --module {SOFTHSM_LIB}"
        start = ('if [ ! -f /var/lib/softhsm/tokens/.made ]; then '
                 f'export HSM_PIN="$(sed -n "s/^login = //p" {BARBICAN_CONF})" && '
                 f'{tool} --init-token --label barbican --so-pin env:SO_PIN --slot-index 0 && '
                 f'{tool} --token-label barbican --login --login-type so --so-pin env:SO_PIN '
                 '--init-pin --new-pin env:HSM_PIN && barbican-manage db upgrade && '
                 'barbican-manage hsm gen_mkek && barbican-manage hsm gen_hmac && '
                 'touch /var/lib/softhsm/tokens/.made; fi && unset HSM_PIN SO_PIN && '
                 'exec uwsgi --ini /etc/barbican/barbican-api-uwsgi.ini')
        c = self._create("barbican_api_p11", self.python, ["sh", "-c", start], alias="barbican-api-p11",
                         environment={"SO_PIN": secrets.token_hex(4)},
                         files={BARBICAN_CONF: (conf.encode(), 0o600),
                                "/etc/barbican/barbican-api-uwsgi.ini": (self.UWSGI.encode(), 0o644)},
                         ports={"9311/tcp": ("127.0.0.1", self.ports["barbican-p11"])})
        c.start()
        _wait(lambda: requests.get(url + "/", timeout=3).status_code == 300, 300, "barbican_api_p11 serving", c)
        targets = self.workdir / "targets-p11.yaml"
        targets.write_text(yaml.safe_dump({"policy": "legacy", "backends": ["pkcs11"],
                                           "clouds": {role: f"{self.deployment_name}-{role}" for role in ROLES}}))
        path = self.workdir / "deployment-p11.yaml"
        path.write_text(yaml.safe_dump({
            "name": f"{self.deployment_name}-p11", "api": {"cloud": f"{self.deployment_name}-creator",
                                                          "targets": targets.name},
            "defaults": {"pkcs11_module": SOFTHSM_LIB},
            "nodes": {"barbican-1": {"container": self.name("barbican_api_p11"), "url": url}}}, sort_keys=False))
        return path

    def _files(self) -> None:
        """clouds.yaml (one cloud per role), the targets file and the deployment file."""
        clouds = {f"{self.deployment_name}-{role}": {
            "auth": {"auth_url": self.keystone_url, "username": user, "password": self.pw["users"],
                     "project_name": project, "user_domain_name": "Default", "project_domain_name": "Default"},
            "region_name": "RegionOne", "identity_api_version": 3} for role, (user, project, _) in ROLES.items()}
        self.clouds_yaml = self.workdir / "clouds.yaml"
        fd = os.open(self.clouds_yaml, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump({"clouds": clouds}, f)
        self.targets_file = self.workdir / "targets.yaml"
        self.targets_file.write_text(yaml.safe_dump({
            "policy": "legacy", "backends": ["simple_crypto"],
            "clouds": {role: f"{self.deployment_name}-{role}" for role in ROLES}}))
        self.deployment_file = self.workdir / "deployment.yaml"
        self.deployment_file.write_text(yaml.safe_dump(self.deployment_spec(), sort_keys=False))

    def deployment_spec(self) -> dict:
        return {
            "name": self.deployment_name,
            "api": {"cloud": f"{self.deployment_name}-creator", "targets": self.targets_file.name},
            "defaults": {"docker_host": "unix:///var/run/docker.sock", "config": BARBICAN_CONF, "log": "stdout"},
            "nodes": {
                "barbican-1": {"container": self.name("barbican_api"), "url": self.node_url(1)},
                "barbican-2": {"container": self.name("barbican_api_2"), "url": self.node_url(2),
                               "log": BARBICAN_LOG_FILE},
            },
            "keystone": {"container": self.name("keystone")},
            "database": {"container": self.name("mariadb")},
        }

    def environ(self) -> dict:
        return {**os.environ, "OS_CLIENT_CONFIG_FILE": str(self.clouds_yaml)}
