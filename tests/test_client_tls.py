"""The client over TLS and mTLS: real handshakes against a scripted server with certificates
made for the test."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from client_support import start_scripted
from switchboard_client import AsyncSwitchboardClient, SwitchboardClient, SwitchboardError
from tls_support import make_pki


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    return make_pki()


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
        timeout=60,
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
        timeout=60,
    ) as sb:
        assert [h.name for h in await sb.search("q", 1)] == ["svc.op0"]


def test_handshake_fails_without_client_certificate_or_trust(
    mtls_target: str, pki: dict[str, bytes]
) -> None:
    with (
        SwitchboardClient(
            mtls_target, "dev-agent", tls=True, root_certificates=pki["ca"], timeout=60, retries=0
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
            timeout=60,
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
