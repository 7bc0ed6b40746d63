"""gRPC hygiene: ``buf lint`` (STANDARD, with the documented exceptions in buf.yaml) and
``buf breaking`` against the released proto (tools/proto-baseline, from commit 0896cd8), run
offline with the buf binary from PyPI (buf-bin); v1 server reflection and ``Health/List`` on
the real gateway."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc
from gateway_support import RunningGateway
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

REPO = Path(__file__).resolve().parents[1]
BUF = Path(sys.executable).parent / "buf"
BASELINE = REPO / "tools" / "proto-baseline"


def buf(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), "buf is missing: run `make setup` (buf-bin is in the dev extra)"
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


def test_buf_lint_is_clean() -> None:
    out = buf("lint")
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_breaking_change_against_the_released_proto() -> None:
    out = buf("breaking", "proto", "--against", str(BASELINE))
    assert out.returncode == 0, out.stdout + out.stderr


def test_buf_breaking_does_catch_a_removed_rpc(tmp_path: Path) -> None:
    # The comparison is not vacuous: against a baseline with one more RPC, ours "deleted" it.
    copy = tmp_path / "baseline"
    shutil.copytree(BASELINE, copy)
    proto = copy / "switchboard" / "v1" / "gateway.proto"
    text = proto.read_text()
    extra = "service Gateway {\n  rpc Gone(ExecuteRequest) returns (Decision);"
    proto.write_text(text.replace("service Gateway {", extra, 1))
    out = buf("breaking", "proto", "--against", str(copy))
    assert out.returncode != 0
    assert 'Previously present RPC "Gone"' in out.stdout + out.stderr


def _reflect_v1(channel: grpc.Channel, request: reflection_pb2.ServerReflectionRequest,
                ) -> reflection_pb2.ServerReflectionResponse:
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = list(call(iter([request]), timeout=30))
    assert len(responses) == 1
    return responses[0]  # type: ignore[no-any-return]


def test_reflection_v1_and_health_list(gateway: RunningGateway) -> None:
    listed = _reflect_v1(gateway.channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert {"switchboard.v1.Gateway", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    found = _reflect_v1(gateway.channel, reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="switchboard.v1.Gateway"))
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in found.file_descriptor_response.file_descriptor_proto]
    services = {s.name for f in files for s in f.service}
    assert "Gateway" in services

    health = health_pb2_grpc.HealthStub(gateway.channel)
    statuses = health.List(health_pb2.HealthListRequest(), timeout=30).statuses
    assert statuses[""].status == health_pb2.HealthCheckResponse.SERVING
    assert statuses["switchboard.v1.Gateway"].status == health_pb2.HealthCheckResponse.SERVING
