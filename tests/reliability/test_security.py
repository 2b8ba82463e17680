"""Exposure and authentication of the gRPC port: loopback by default, TLS, and mutual TLS.

Certificates are made per test run with the `openssl` command line (the venv has no `cryptography`): a CA, a
server certificate for 127.0.0.1/localhost, a client certificate from that CA, and a client certificate from
another CA. The console's authentication beyond loopback is the web tests' job.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from edgebox.client import EdgeboxClient, EdgeboxClientError, client_ssl_context
from edgebox.proto_gen import infer as pb
from tests.support.engine import AsyncioThread, EngineProcess, start_engine_process

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command line is not installed")
REFUSED = (ssl.SSLError, ConnectionError, StreamTerminatedError, ProtocolError, OSError)


# -- where the port listens ------------------------------------------------------------------------------------
def listeners(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets LISTENing on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


def test_grpc_listens_on_loopback_only_by_default(tmp_path, figures):
    # The kernel's socket table is conclusive; no traffic is sent to any address beyond loopback (sandbox rule).
    engine = start_engine_process(tmp_path, {"log_level": "WARNING"})
    try:
        assert engine.host == "127.0.0.1"
        bound = listeners(engine.port)
        assert bound == ["0100007F"], f"listening on {bound} (hex /proc/net/tcp addresses), expected 127.0.0.1 only"
    finally:
        assert engine.stop() == 0
    figures.add("gRPC default bind", f"127.0.0.1:{engine.port} only (/proc/net/tcp)")


def test_grpc_host_0_0_0_0_binds_every_address_when_asked(tmp_path):
    # The positive control of the test above: the same check does see a port that is exposed.
    engine = start_engine_process(tmp_path, {"log_level": "WARNING"}, "--grpc_host", "0.0.0.0")
    try:
        assert listeners(engine.port) == ["00000000"]
    finally:
        assert engine.stop() == 0


# -- TLS and mutual TLS ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    rogue_cert: Path  # a client certificate issued by other_ca
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=edgebox test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)


def _issue(folder: Path, name: str, ca: str, extensions: str) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    (folder / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if OPENSSL is None:
        pytest.skip("the openssl command line is not installed")
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "ca")
    _ca(folder, "other-ca")
    leaf = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    _issue(folder, "server", "ca", leaf + "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _issue(folder, "client", "ca", leaf + "extendedKeyUsage=clientAuth\n")
    _issue(folder, "rogue", "other-ca", leaf + "extendedKeyUsage=clientAuth\n")
    f = folder.joinpath
    return Pki(f("ca.crt"), f("server.crt"), f("server.key"), f("client.crt"), f("client.key"), f("other-ca.crt"),
               f("rogue.crt"), f("rogue.key"))


def tls_engine(folder: Path, pki: Pki, *, mutual: bool) -> EngineProcess:
    tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    if mutual:
        tls["client_ca_file"] = str(pki.ca)
    return start_engine_process(folder, {"log_level": "INFO", "grpc": {"tls": tls}})


def health(aio: AsyncioThread, engine: EngineProcess, context: ssl.SSLContext | None) -> str:
    """'SERVING' when the call works, else the name of the error that refused it (never a timeout)."""
    async def call() -> str:
        client = EdgeboxClient(engine.host, engine.port, timeout=20, ssl_context=context)
        try:
            answer = await client.health()
            return pb.HealthStatus(answer.status).name
        except TimeoutError:  # an OSError too: caught first, a hang is not a refusal
            return "timeout"
        except REFUSED as exc:
            return f"refused ({type(exc).__name__})"
        except (GRPCError, EdgeboxClientError) as exc:
            return f"grpc error ({exc})"
        finally:
            client.close()

    return aio.submit(call).result(120)


@pytest.fixture(scope="module")
def mtls_engine(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[EngineProcess]:
    engine = tls_engine(tmp_path_factory.mktemp("mtls"), pki, mutual=True)
    yield engine
    assert engine.stop() == 0, engine.log()


@needs_openssl
def test_mtls_accepts_a_client_certificate_from_the_configured_ca(aio, pki, mtls_engine, figures):
    assert health(aio, mtls_engine, client_ssl_context(pki.ca, pki.client_cert, pki.client_key)) == "SERVING"
    assert "(mTLS)" in mtls_engine.log_path.read_text()


@needs_openssl
@pytest.mark.parametrize("who", ["certificate from another CA", "no certificate", "plaintext"])
def test_mtls_refuses_clients_without_a_certificate_from_the_configured_ca(aio, pki, mtls_engine, figures, who):
    context = {"certificate from another CA": client_ssl_context(pki.ca, pki.rogue_cert, pki.rogue_key),
               "no certificate": client_ssl_context(pki.ca),
               "plaintext": None}[who]
    answer = health(aio, mtls_engine, context)
    assert answer.startswith("refused"), f"{who}: {answer}"
    figures.add(f"mTLS client with {who}", answer)


@needs_openssl
def test_a_client_that_does_not_trust_the_server_ca_refuses_the_server(aio, pki, mtls_engine):
    answer = health(aio, mtls_engine, client_ssl_context(pki.other_ca, pki.client_cert, pki.client_key))
    assert answer == "refused (SSLCertVerificationError)", answer


@needs_openssl
def test_tls_without_client_ca_accepts_clients_without_a_certificate(tmp_path, aio, pki, figures):
    engine = tls_engine(tmp_path, pki, mutual=False)
    try:
        without = health(aio, engine, client_ssl_context(pki.ca))
        with_cert = health(aio, engine, client_ssl_context(pki.ca, pki.client_cert, pki.client_key))
        plaintext = health(aio, engine, None)
    finally:
        assert engine.stop() == 0, engine.log()
    assert without == "SERVING" and with_cert == "SERVING", (without, with_cert)
    assert plaintext.startswith("refused"), plaintext
    figures.add("TLS without client_ca_file", f"client without certificate: {without}; plaintext client: {plaintext}")
