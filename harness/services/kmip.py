"""A PyKMIP server per environment, the backend of Barbican's `kmip_plugin` secret store.

Everything lives under `<run_dir>/kmip/`: a private CA, the server certificate (127.0.0.1,
IP SAN), the client certificate Barbican presents, the server config, an empty policy
directory and the server's SQLite database.

Odd things to know (all seen on PyKMIP 0.11.0 / Barbican 23.0.0):

* Barbican refuses the client key unless its mode is exactly 0400 (`st_mode == 0o100400`,
  so 0600 fails): "Bad key file permissions found, expected 400 for path: ...". The
  client key is therefore written 0400; the CA and server keys are 0600.
* The server authenticates by client certificate only. The client certificate needs
  extendedKeyUsage clientAuth, and its CN becomes the owner of every object it creates
  (PyKMIP's default policy lets only the owner read an object back). All Barbican nodes
  share one client certificate, so they all see each other's secrets.
  KMIP username/password are not checked without a SLUGS auth plugin, so Barbican gets
  none.
* The client does not check the host name (PyKMIP builds an `SSLContext(PROTOCOL_TLSv1_2)`,
  whose `check_hostname` is off); it only verifies the chain against `ca_certs`. The IP
  SAN is there for any other client.
* The server writes its own log to the file given by `-l` (the default is
  /var/log/pykmip/server.log); stdout/stderr (logs/kmip.log) only get
  Python warnings and tracebacks.
* The server forks a multiprocessing manager and a policy monitor; they stay in the
  server's session, so stopping the process group stops all three.
* Generating an asymmetric key pair (RSA orders) fails against PyKMIP 0.11.0, so Barbican
  answers 500: Barbican sends no usage masks and the server says "OPERATION_FAILED:
  INVALID_FIELD - The cryptographic usage mask must be specified as an attribute for the
  public key." Storing RSA private/public keys and certificates works (upstream's
  test_rsa skips KMIP anyway).
* On SIGTERM the server finishes its current 10 s `accept()` timeout before it exits;
  `stop()` sends SIGINT instead, which interrupts `accept()` at once.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import time
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness.errors import HarnessError
from harness.ports import free_port
from harness.services.base import Service

HOST = "127.0.0.1"
CLIENT_CN = "barbican"  # owner of every object Barbican creates in this KMIP server
SSL_VERSION = "PROTOCOL_TLSv1_2"  # matches the server's auth_suite=TLS1.2


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write a file that is created with `mode` (never briefly world-readable).
    Unlink first: re-preparing must also work on a 0400 file and must reset its mode."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject_cn: str, key, issuer_cert: x509.Certificate | None, issuer_key,
          extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    """A certificate valid from a minute ago for 30 days (an environment lives hours)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _key_usage(*, cert_sign: bool = False, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=key_encipherment,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False)


class KmipServer(Service):
    name = "kmip"

    # -- paths ------------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return self.ctx.run_dir / "kmip"

    def _p(self, name: str) -> Path:
        return self.dir / name

    @property
    def server_bin(self) -> str:
        # PyKMIP 0.11.0 (server included) runs with the harness venv's SQLAlchemy 2.1:
        # no separate venv needed.
        return self.ctx.bin("pykmip-server")

    # -- lifecycle --------------------------------------------------------------------------
    def check(self) -> None:
        if not Path(self.server_bin).is_file():
            # Not a Debian package: it comes with the harness venv (pip install pykmip).
            raise HarnessError(f"{self.server_bin} not found: PyKMIP is missing from the "
                               "harness venv; run ./run setup (or pip install pykmip==0.11.0)")

    @property
    def server_conf(self) -> Path:
        return self._p("server.conf")

    def prepare(self) -> None:
        if "kmip" not in self.ctx.ports:  # keep the port on a re-prepare of the same env
            self.ctx.ports["kmip"] = free_port(HOST)
        self.write_files(HOST, self.ctx.ports["kmip"])

    def write_files(self, host: str, port: int) -> None:
        """Everything the server reads, for a server listening on host:port: the TLS
        material, the policy directory and the config (the docker provider's server
        container reads the same files through the mounted run directory)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._make_tls()
        self._p("policies").mkdir(exist_ok=True)
        self.ctx.render(
            "pykmip-server.conf.j2", self.server_conf,
            host=host,
            port=port,
            certificate_path=self._p("server.crt"),
            key_path=self._p("server.key"),
            ca_path=self._p("ca.crt"),
            policy_path=self._p("policies"),
            database_path=self._p("pykmip.db"),
            logging_level="INFO",  # DEBUG logs whole requests, i.e. secret payloads
        )

    def _make_tls(self) -> None:
        ca_key = _new_key()
        ca = _cert("harness-kmip-ca", ca_key, None, ca_key, [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (_key_usage(cert_sign=True), True),
        ])
        server_key = _new_key()
        server = _cert(HOST, server_key, ca, ca_key, [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(key_encipherment=True), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST)),
                                          x509.DNSName("localhost")]), False),
        ])
        client_key = _new_key()
        client = _cert(CLIENT_CN, client_key, ca, ca_key, [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(key_encipherment=True), True),
            # PyKMIP refuses a client certificate without clientAuth.
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ])
        pem = serialization.Encoding.PEM
        _write(self._p("ca.key"), _key_pem(ca_key), 0o600)
        _write(self._p("ca.crt"), ca.public_bytes(pem), 0o644)
        _write(self._p("server.key"), _key_pem(server_key), 0o600)
        _write(self._p("server.crt"), server.public_bytes(pem), 0o644)
        _write(self._p("client.key"), _key_pem(client_key), 0o400)  # Barbican demands 0400
        _write(self._p("client.crt"), client.public_bytes(pem), 0o644)

    def argv(self) -> list[str]:
        # The config file carries everything; -l keeps the server log out of
        # /var/log/pykmip. (`python -m kmip.services.server.server` works too but warns
        # about the module being imported twice.)
        return [self.server_bin,
                "-f", str(self.server_conf),
                "-l", str(self.ctx.logs_dir / "kmip-server.log")]

    def start(self) -> None:
        # SIGINT: the server's handler raises KeyboardInterrupt out of accept(); SIGTERM
        # only takes effect at the next 10 s accept() timeout.
        self.spawn(self.argv(), ports=[self.ctx.ports["kmip"]], env=self._env(), stop_signal=signal.SIGINT)

    def _env(self) -> dict[str, str]:
        # The server reads only its -f config (never ~/.pykmip), so the environment
        # can be inherited; unbuffered so a crash's traceback reaches kmip.log.
        return self.ctx.environ(PYTHONUNBUFFERED="1")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Healthy = a mutually authenticated TLS session in which the server creates an
        AES key, returns it and destroys it (proves TLS, the engine and the database)."""
        port = self.ctx.ports["kmip"]
        deadline = time.monotonic() + timeout
        last = "not listening yet"
        while time.monotonic() < deadline:
            for proc in self.processes:
                if proc.popen is not None and proc.popen.poll() is not None:
                    raise self.fail(f"process {proc.name} exited with {proc.popen.returncode}")
            # Probe only once the server listens: before that, PyKMIP's client logs every
            # refused connection as an error (and a bare TCP connect would make the server
            # log a TLS EOF error), so look at the server's sockets instead of connecting.
            if self._listening(port):
                try:
                    self.probe(timeout=min(5.0, max(1.0, deadline - time.monotonic())))
                    return
                except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                    last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
        raise self.fail(f"{HOST}:{port} did not serve KMIP within {timeout:.0f} s (last: {last})")

    def _listening(self, port: int) -> bool:
        for rec in self.records():
            try:
                conns = psutil.Process(rec.pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
                return True
        return False

    def probe(self, timeout: float = 5.0) -> None:
        """One create/get/destroy round trip with Barbican's client settings."""
        from kmip.core import enums
        from kmip.pie.client import ProxyKmipClient

        opts = self.barbican_options()
        client = ProxyKmipClient(
            hostname=opts["host"], port=int(opts["port"]), cert=opts["certfile"],
            key=opts["keyfile"], ca=opts["ca_certs"], ssl_version=opts["ssl_version"],
            config_file=os.devnull)  # no ~/.pykmip/pykmip.conf of whoever runs this
        # ProxyKmipClient has no timeout argument (only its config file has one). The
        # proxy applies it to the socket before connect, so it bounds connect, the TLS
        # handshake and every read.
        client.proxy.timeout = timeout
        with client:
            uid = client.create(enums.CryptographicAlgorithm.AES, 128)
            try:
                key = client.get(uid)
                if len(key.value) != 16:
                    raise RuntimeError(f"server returned a {len(key.value)}-byte AES-128 key")
            finally:
                client.destroy(uid)

    # -- Barbican ---------------------------------------------------------------------------
    def barbican_options(self) -> dict[str, str]:
        """The [kmip_plugin] options of barbican.conf (values as strings).

        No username/password: this server authenticates by client certificate only.
        pkcs1_only stays False: PyKMIP stores the PKCS#8 / X.509 DER Barbican sends, and RSA
        private/public keys and certificates come back byte-identical.
        """
        return {
            "host": HOST,
            "port": str(self.ctx.ports["kmip"]),
            "ssl_version": SSL_VERSION,
            "ca_certs": str(self._p("ca.crt")),
            "certfile": str(self._p("client.crt")),
            "keyfile": str(self._p("client.key")),
            "pkcs1_only": "False",
            "plugin_name": "PyKMIP",
        }
