"""TLS and mTLS on the gRPC port, with certificates made for the test (real handshakes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_support import RunningGateway, gateway_settings, md
from tls_support import make_pki

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.config import TlsSettings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    pem = make_pki()
    (d / "ca.pem").write_bytes(pem["ca"])
    (d / "server.pem").write_bytes(pem["server"])
    (d / "server.key").write_bytes(pem["server_key"])
    return {"ca": pem["ca"], "client_cert": pem["client"], "client_key": pem["client_key"],
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
            pb.GetManifestRequest(), metadata=md("dev-agent"), timeout=60)


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
                                                 metadata=md("dev-agent"), timeout=60)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
