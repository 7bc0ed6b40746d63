"""The client over TLS and mTLS: real handshakes against a scripted server with certificates
made for the test."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from client_support import start_scripted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.client import AsyncSwitchboardClient, SwitchboardClient, SwitchboardError


def _cert(
    subject: str,
    key: Any,
    issuer: tuple[str, Any] | None,
    *,
    ca: bool = False,
    ip: str | None = None,
) -> x509.Certificate:
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
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return bytes(
        obj.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("gateway", srv_key, ("test-ca", ca_key), ip="127.0.0.1")
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = _cert("agent-1", cli_key, ("test-ca", ca_key))
    return {
        "ca": _pem(ca),
        "server": _pem(srv),
        "server_key": _pem(srv_key),
        "client": _pem(cli),
        "client_key": _pem(cli_key),
    }


@pytest.fixture(scope="module")
def mtls_target(pki: dict[str, bytes]) -> Iterator[str]:
    creds = grpc.ssl_server_credentials(
        [(pki["server_key"], pki["server"])], root_certificates=pki["ca"], require_client_auth=True
    )
    server, port, _ = start_scripted(creds)
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_mtls_with_client_certificate(mtls_target: str, pki: dict[str, bytes]) -> None:
    with SwitchboardClient(
        mtls_target,
        "dev-agent",
        tls=True,
        root_certificates=pki["ca"],
        client_key=pki["client_key"],
        client_cert_chain=pki["client"],
        timeout=5,
    ) as sb:
        assert sb.run_code("1").ok


async def test_async_mtls(mtls_target: str, pki: dict[str, bytes]) -> None:
    async with AsyncSwitchboardClient(
        mtls_target,
        "dev-agent",
        tls=True,
        root_certificates=pki["ca"],
        client_key=pki["client_key"],
        client_cert_chain=pki["client"],
        timeout=5,
    ) as sb:
        assert [h.name for h in await sb.search("q", 1)] == ["svc.op0"]


def test_handshake_fails_without_client_certificate_or_trust(
    mtls_target: str, pki: dict[str, bytes]
) -> None:
    with (
        SwitchboardClient(
            mtls_target, "dev-agent", tls=True, root_certificates=pki["ca"], timeout=3, retries=0
        ) as sb,
        pytest.raises(SwitchboardError) as no_cert,
    ):
        sb.run_code("1")
    assert no_cert.value.status == grpc.StatusCode.UNAVAILABLE
    with (
        SwitchboardClient(
            mtls_target,
            "dev-agent",
            tls=True,
            client_key=pki["client_key"],
            client_cert_chain=pki["client"],
            timeout=3,
            retries=0,
        ) as sb,
        pytest.raises(SwitchboardError) as untrusted,
    ):
        sb.run_code("1")  # the system roots do not know the test CA
    assert untrusted.value.status == grpc.StatusCode.UNAVAILABLE


def test_client_certificate_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="both"):
        SwitchboardClient("127.0.0.1:1", "t", tls=True, client_key=b"k")
    with pytest.raises(ValueError, match="tls=True"):
        SwitchboardClient("127.0.0.1:1", "t", client_key=b"k", client_cert_chain=b"c")
