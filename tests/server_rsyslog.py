"""A real rsyslog for the syslog sink's tests: UDP, TCP and TLS inputs on 127.0.0.1.

Debian's ``rsyslog`` and ``rsyslog-openssl`` (and the libraries rsyslog needs that a slim
image lacks) are fetched with ``apt-get download`` and unpacked with ``dpkg -x`` into
``~/.cache/rotator-test/rsyslog-<version>/`` (``python tests/server_rsyslog.py fetch``, which
``scripts/setup.sh --tests`` runs), so nothing is installed system-wide. :class:`Rsyslog`
starts ``rsyslogd -n`` with a configuration of its own: imudp and imtcp on free ports, a
second imtcp with the OpenSSL driver and a test CA's server certificate (made at run time
with ``cryptography``), and a third that also demands a client certificate. Every message
is written to a file with a template that keeps the raw message (``%rawmsg%``), so a test
compares byte for byte what rsyslog received with what rotator sent.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

VERSION = "8.2302.0-1+deb12u2"
PACKAGES = ("rsyslog", "rsyslog-openssl", "libestr0", "libfastjson4", "liblognorm5")
CACHE = Path(os.environ.get("ROTATOR_TEST_CACHE", Path.home() / ".cache" / "rotator-test"))
ARCH_LIB = "usr/lib/x86_64-linux-gnu"


def rsyslog_root(version: str = VERSION) -> Path:
    """The unpacked packages; fetched once under a lock (several test sessions may race)."""
    root = CACHE / f"rsyslog-{version}"
    if (root / "usr/sbin/rsyslogd").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"rsyslog-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "usr/sbin/rsyslogd").exists():
            return root
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            wanted = [f"{p}" for p in PACKAGES]
            for attempt in range(10):  # another process may hold apt's lock
                done = subprocess.run(["apt-get", "download", *wanted], cwd=tmp,
                                      capture_output=True, text=True)
                if done.returncode == 0:
                    break
                time.sleep(3 + attempt)
            else:
                raise RuntimeError(f"apt-get download {' '.join(wanted)}: {done.stderr[-500:]}")
            unpacked = Path(tmp) / "root"
            for deb in sorted(Path(tmp).glob("*.deb")):
                subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
            os.replace(unpacked, root)
    return root


@dataclass
class TestCa:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.pem", self.dir / f"{name}-key.pem"


def make_ca(directory: Path) -> TestCa:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rotator test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    result = TestCa(directory)
    result.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    import ipaddress
    for name, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                        ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"),
                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        cert_path, key_path = result.pair(name)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key_path, key)
    return result


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_CONFIG = """\
global(workDirectory="{work}" maxMessageSize="256k"
       defaultNetstreamDriverCAFile="{ca}"
       defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
module(load="imudp")
module(load="imtcp" maxSessions="50")
input(type="imudp" address="127.0.0.1" port="{udp}" name="udp" ruleset="keep")
input(type="imtcp" address="127.0.0.1" port="{tcp}" name="tcp" ruleset="keep")
input(type="imtcp" address="127.0.0.1" port="{tls}" name="tls" ruleset="keep"
      streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" address="127.0.0.1" port="{mtls}" name="mtls" ruleset="keep"
      streamDriver.name="ossl" streamDriver.mode="1"
      streamDriver.authMode="x509/certvalid")
template(name="raw" type="list") {{
  property(name="inputname") constant(value=" ")
  property(name="rawmsg") constant(value="\\n")
}}
ruleset(name="keep") {{
  action(type="omfile" file="{out}" template="raw" flushOnTXEnd="on" asyncWriting="off")
}}
"""


class Rsyslog:
    """rsyslogd in the foreground on 127.0.0.1; what it received is in :attr:`out`."""

    def __init__(self, directory: Path, root: Path | None = None) -> None:
        self.dir = directory
        self.root = root or rsyslog_root()
        self.ca = make_ca(directory / "pki")
        self.out = directory / "received.log"
        self.ports = {"udp": free_port(socket.SOCK_DGRAM), "tcp": free_port(),
                      "tls": free_port(), "mtls": free_port()}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Rsyslog:
        work = self.dir / "work"
        work.mkdir(parents=True, exist_ok=True)
        cert, key = self.ca.pair("server")
        conf = self.dir / "rsyslog.conf"
        conf.write_text(_CONFIG.format(work=work, ca=self.ca.ca, cert=cert, key=key,
                                       out=self.out, **self.ports))
        env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(self.root / ARCH_LIB)}
        with open(self.dir / "rsyslogd.log", "wb") as log:
            self.process = subprocess.Popen(
                [str(self.root / "usr/sbin/rsyslogd"), "-n", "-f", str(conf), "-i",
                 str(self.dir / "rsyslogd.pid"), "-M", str(self.root / ARCH_LIB / "rsyslog")],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(300):  # up to ~30 s on a busy machine: counted, not timed
            if self.process.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {self.log()[-2000:]}")
            if all(self._listening(p) for k, p in self.ports.items() if k != "udp"):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"rsyslogd did not listen: {self.log()[-2000:]}")

    @staticmethod
    def _listening(port: int) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return True
        return False

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "rsyslogd.log").read_text(errors="replace")
        return ""

    def received(self) -> list[tuple[str, str]]:
        """(input name, raw message) of every message written so far."""
        if not self.out.exists():
            return []
        lines = self.out.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        return [(line.partition(" ")[0], line.partition(" ")[2]) for line in lines if line]

    def wait_for(self, count: int, attempts: int = 300) -> list[tuple[str, str]]:
        """Every message once at least ``count`` arrived (polled, bounded)."""
        for _ in range(attempts):
            got = self.received()
            if len(got) >= count:
                return got
            time.sleep(0.1)
        return self.received()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


if __name__ == "__main__":
    if sys.argv[1:] == ["fetch"]:
        print(rsyslog_root())
    elif sys.argv[1:2] == ["run"]:  # manual check: python tests/server_rsyslog.py run DIR
        server = Rsyslog(Path(sys.argv[2])).start()
        print(server.ports)
        try:
            server.process.wait() if server.process else None
        finally:
            server.stop()
            shutil.rmtree(Path(sys.argv[2]) / "work", ignore_errors=True)
