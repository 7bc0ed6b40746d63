"""Standard gRPC services the installed packages only partly provide.

* ``grpc.health.v1.Health/List``: grpcio-health-checking ships the RPC in its proto and stubs
  but its servicer answers UNIMPLEMENTED; :class:`HealthServicer` adds it.
* ``grpc.reflection.v1.ServerReflection``: grpcio-reflection ships only ``v1alpha``. The v1
  protocol is the same messages under another package (identical field numbers), so
  :func:`enable_reflection` serves the v1alpha servicer at the v1 path too, and lists both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

__all__ = ["REFLECTION_V1_SERVICE_NAME", "HealthServicer", "enable_reflection"]

REFLECTION_V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]  # untyped base
    """The asyncio health servicer plus ``List`` (every service's current status)."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        statuses = dict(self._server_status)  # the base class keeps no public accessor
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in statuses.items()})


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Server reflection, v1alpha and v1, listing ``service_names`` and both reflection
    services."""
    names = (*service_names, reflection.SERVICE_NAME, REFLECTION_V1_SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    servicer = reflection.aio.ReflectionServicer(names)
    handler = grpc.method_handlers_generic_handler(REFLECTION_V1_SERVICE_NAME, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )})
    server.add_generic_rpc_handlers((handler,))
