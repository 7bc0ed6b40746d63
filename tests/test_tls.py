"""TLS and mTLS on the gRPC port, with certificates made for the test (real handshakes)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gateway_support import RunningGateway, gateway_settings, md

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.config import TlsSettings

Key = ec.EllipticCurvePrivateKey


def _cert(subject: str, key: Key, issuer: tuple[str, Key] | None, *, ca: bool = False,
          ip: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes | Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("gateway", srv_key, ("test-ca", ca_key), ip="127.0.0.1")
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = _cert("agent-1", cli_key, ("test-ca", ca_key))
    files = {"ca.pem": _pem(ca), "server.pem": _pem(srv), "server.key": _pem(srv_key)}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return {"ca": _pem(ca), "client_cert": _pem(cli), "client_key": _pem(cli_key),
            "dir": d}


@pytest.fixture(scope="module")
def mtls_gateway(backends: dict[str, Any], pki: dict[str, Any],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    d: Path = pki["dir"]
    settings = gateway_settings(
        tmp_path_factory.mktemp("gw-tls"), backends,
        tls=TlsSettings(cert_file=d / "server.pem", key_file=d / "server.key",
                        client_ca_file=d / "ca.pem"))
    gw = RunningGateway(settings)
    yield gw
    gw.stop()


def _manifest(target: str, creds: grpc.ChannelCredentials) -> pb.Manifest:
    with grpc.secure_channel(target, creds) as channel:
        return pb_grpc.GatewayStub(channel).GetManifest(
            pb.GetManifestRequest(), metadata=md("dev-agent"), timeout=10)


def test_mtls_client_with_certificate_is_served(mtls_gateway: RunningGateway,
                                                pki: dict[str, Any]) -> None:
    creds = grpc.ssl_channel_credentials(pki["ca"], pki["client_key"], pki["client_cert"])
    manifest = _manifest(f"127.0.0.1:{mtls_gateway.port}", creds)
    assert any(t.name == "execute_code" for t in manifest.tools)


def test_client_without_certificate_is_refused(mtls_gateway: RunningGateway,
                                               pki: dict[str, Any]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _manifest(f"127.0.0.1:{mtls_gateway.port}", grpc.ssl_channel_credentials(pki["ca"]))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_is_refused(mtls_gateway: RunningGateway) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{mtls_gateway.port}") as channel, \
            pytest.raises(grpc.RpcError) as info:
        pb_grpc.GatewayStub(channel).GetManifest(pb.GetManifestRequest(),
                                                 metadata=md("dev-agent"), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
