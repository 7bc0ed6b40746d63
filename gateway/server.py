"""Assemble the gateway: load the catalog, start the policy engine and the sandbox pool, and
serve the gRPC API (with health and reflection) — and MCP when enabled.

``await create_server(settings)`` returns ``(server, port)`` with the server already listening,
so tests run the real thing in-process on port 0.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway import __version__
from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.approvals import ApprovalService, open_approval_store
from gateway.approvals.servicer import add_approvals_service
from gateway.audit import AuditSettings, Telemetry, register_secret, setup_telemetry
from gateway.audit.redact import load_digest_key
from gateway.catalog import load_catalog
from gateway.config import Settings
from gateway.frontdoor import PrincipalCalls
from gateway.grpc_services import HealthServicer, enable_reflection
from gateway.identity import Authenticator
from gateway.interceptors import CallInterceptor
from gateway.models import BackendSettings
from gateway.pipeline import Pipeline
from gateway.policy import PolicyEngine, create_policy_engine
from gateway.readiness import Readiness, readiness_checks
from gateway.sandbox import SandboxPool, start_sandbox, stop_sandbox
from gateway.sandbox.registry import SessionRegistry
from gateway.servicer import GatewayServicer
from gateway.tools import (
    BackendClient,
    IdempotencyStore,
    ToolChannel,
    discover_reconcilers,
    open_idempotency_store,
)
from gateway.tools.idempotency import new_owner_id

if TYPE_CHECKING:
    from gateway.mcp_server import McpHandle

__all__ = ["GatewayServer", "create_server"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Gateway"].full_name
log = structlog.get_logger("switchboard.server")


@dataclass
class GatewayServer:
    """The running gateway: the grpc.aio server plus everything it owns."""

    grpc_server: grpc.aio.Server
    port: int
    pipeline: Pipeline
    authenticator: Authenticator
    telemetry: Telemetry
    health: health.aio.HealthServicer
    _closers: list[Any] = field(default_factory=list)
    mcp: McpHandle | None = None
    _stopped: bool = False
    audit: AuditSettings | None = None  # for the final signed checkpoint
    in_flight: PrincipalCalls | None = None  # calls per principal, both doors

    @property
    def mcp_port(self) -> int | None:
        return self.mcp.port if self.mcp else None

    async def stop(self, grace: float | None = 5.0) -> None:
        """Stop taking calls, let in-flight ones finish within ``grace``, release everything."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        draining = [self.grpc_server.stop(grace)]
        if self.mcp is not None:
            draining.append(self.mcp.stop(grace or 0.0))
        await asyncio.gather(*draining)
        await _close_all(self._closers)
        self.telemetry.force_flush()
        self.telemetry.shutdown()
        if self.audit is not None and self.audit.file and self.audit.checkpoint_key_file:
            _checkpoint(self.audit)

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def _purge_forever(store: IdempotencyStore, every_s: float = 300.0) -> None:
    """Drop expired idempotency records now and then; a failure is logged, never fatal."""
    while True:
        try:
            removed = await store.purge()
            if removed:
                log.info("idempotency.purged", records=removed)
        except Exception:
            log.exception("idempotency purge failed")
        await asyncio.sleep(every_s)


def _checkpoint(settings: AuditSettings) -> None:
    """Sign the audit file's last record (docs/audit.md, "Signed checkpoints")."""
    from gateway.audit.checkpoint import sign_checkpoint

    if settings.file is None or settings.checkpoint_key_file is None:
        return
    try:
        sign_checkpoint(settings.file, settings.checkpoint_key_file,
                        export=settings.checkpoint_export)
    except (OSError, ValueError) as exc:
        log.warning("audit.checkpoint_failed", error=str(exc))


async def _checkpoint_forever(telemetry: Telemetry, settings: AuditSettings) -> None:
    while True:
        await asyncio.sleep(settings.checkpoint_interval_s)
        telemetry.force_flush()
        await asyncio.to_thread(_checkpoint, settings)


class _LazyAppTransport(httpx.AsyncBaseTransport):
    """An in-process app (``backends[].app``) imported on its first call, or right after
    SERVING by :func:`_warm` (whichever comes first; one import, in a thread): with the demo
    document cached, FastAPI and the apps (~0.5 s) are not on the way to SERVING."""

    def __init__(self, entry: str) -> None:
        self.entry = entry
        self._loading: asyncio.Future[Any] | None = None
        self._inner: httpx.ASGITransport | None = None

    async def load(self) -> httpx.ASGITransport:
        if self._inner is None:
            if self._loading is None:
                from gateway.tools.client import load_app

                self._loading = asyncio.ensure_future(asyncio.to_thread(load_app, self.entry))
            app = await asyncio.shield(self._loading)
            if self._inner is None:
                self._inner = httpx.ASGITransport(app=app)
        return self._inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await (await self.load()).handle_async_request(request)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()


def _lazy_transports(made: list[_LazyAppTransport],
                     ) -> Callable[[BackendSettings], httpx.AsyncBaseTransport | None]:
    def transport_for(backend: BackendSettings) -> httpx.AsyncBaseTransport | None:
        # BackendClient's own choice (an app without base_url goes through ASGI), made lazy.
        if not backend.app or backend.base_url:
            return None
        made.append(_LazyAppTransport(backend.app))
        return made[-1]
    return transport_for


async def _warm(pipeline: Pipeline, apps: list[_LazyAppTransport]) -> None:
    # Ahead of the first call, not on the way to SERVING: the in-process apps, then the search
    # index and the sandbox SDK.
    for transport in apps:
        try:
            await transport.load()
        except Exception:
            log.exception("importing the backend app failed", app=transport.entry)
    try:
        await asyncio.to_thread(pipeline.catalog.warm_index)
        await asyncio.to_thread(pipeline.warm_sdk)
    except Exception:
        log.exception("warming failed (done on first use instead)")


async def _close_all(closers: list[Any]) -> None:
    """Release resources in reverse order of acquisition; one failure does not stop the rest."""
    for close in reversed(closers):
        try:
            result = close()
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            log.exception("error while closing", closer=repr(close))


async def create_server(
    settings: Settings, *,
    sandbox_started: tuple[SandboxPool, asyncio.Task[None]] | None = None,
) -> tuple[GatewayServer, int]:
    """Build and start the gateway described by ``settings``; returns it and the bound port.

    ``sandbox_started``: a pool from :func:`gateway.sandbox.start_sandbox` started earlier
    (``serve`` starts it before importing this module); owned by the server from here on."""
    # The sandbox pool starts first and in the background: its Deno processes boot, compile
    # Pyodide and restore the snapshot on the other core while this one loads the catalog and
    # the policy. It is awaited below, after them, so their errors still come first.
    started = sandbox_started or start_sandbox(settings.sandbox)
    sandbox, sandbox_start = started
    try:
        digest_key = load_digest_key(settings.audit.digest_key_file)  # holds no resource
        telemetry = setup_telemetry(settings.audit)
    except BaseException:
        await stop_sandbox(started)
        raise
    closers: list[Any] = [functools.partial(stop_sandbox, started)]
    try:
        catalog = await load_catalog(settings.backends)
        policy: PolicyEngine = create_policy_engine(settings.policy)
        await policy.start()
        closers.append(policy.close)
        lazy_apps: list[_LazyAppTransport] = []
        client = BackendClient({b.name: b for b in settings.backends},
                               transport_for=_lazy_transports(lazy_apps))
        closers.append(client.aclose)
        store = open_idempotency_store(settings.idempotency)
        closers.append(store.aclose)
        approval_store = open_approval_store(settings.idempotency)
        if approval_store is not None:
            closers.append(approval_store.aclose)
        purger = asyncio.create_task(_purge_forever(store), name="idempotency-purge")
        closers.append(purger.cancel)
        sandbox.bind_registry(SessionRegistry(
            store, new_owner_id(), lease_s=settings.sandbox.session_idle_s * 1.5 + 30))
        if any(b.base_url for b in settings.backends):
            # aiohttp (~0.2-0.4 s) is imported on first use elsewhere (not needed by the demo's
            # in-process apps); with network backends, before SERVING (while the sandbox boots)
            # so the first call's attempt timeout is not spent importing it.
            await asyncio.to_thread(importlib.import_module, "aiohttp")
        # Done once one sandbox process has a ready interpreter (readiness needs no more: a
        # code run can be served); the others start in the background, one after another.
        await sandbox_start
    except BaseException:
        await _close_all(closers)
        telemetry.shutdown()
        raise

    # Literal secrets are scrubbed from every span and log line, wherever they turn up.
    for token in settings.identity.tokens:
        register_secret(token)
    for backend in settings.backends:
        for value in backend.headers.values():
            register_secret(value)
    pipeline = Pipeline(catalog=catalog, policy=policy, client=client,
                        tools=ToolChannel(client, store, settings=settings.idempotency,
                                          reconcilers=discover_reconcilers(catalog.operations)),
                        sandbox=sandbox,
                        tracer=telemetry.tracer,
                        approvals=ApprovalService(approval_store,
                                                  replay_s=settings.idempotency.ttl_s,
                                                  digest_key=digest_key),
                        digest_key=digest_key)
    authenticator = Authenticator(
        settings.identity.tokens, jwks_url=settings.identity.jwks_url,
        issuer=settings.identity.issuer, audience=settings.identity.audience)
    limit = settings.max_message_bytes
    in_flight = PrincipalCalls(settings.max_calls_in_flight_per_principal)  # both doors
    server = grpc.aio.server(
        interceptors=[CallInterceptor(authenticator, telemetry.tracer, in_flight)],
        options=[("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", limit),
                 # Shared only by the processes of one `serve --processes N` (supervisor.py):
                 # otherwise a second gateway on the same port is an error, not a silent split.
                 ("grpc.so_reuseport", 1 if settings.processes > 1 else 0)],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    pb_grpc.add_GatewayServicer_to_server(  # type: ignore[no-untyped-call]
        GatewayServicer(pipeline), server)
    approvals_service = add_approvals_service(pipeline.approvals, server)
    health_servicer = HealthServicer()  # with Health/List
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # Reflection v1alpha and v1.
    enable_reflection((SERVICE_NAME, approvals_service, health.SERVICE_NAME), server)
    if settings.tls is not None:
        tls = settings.tls
        credentials = grpc.ssl_server_credentials(
            [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
            root_certificates=tls.client_ca_file.read_bytes() if tls.client_ca_file else None,
            require_client_auth=tls.client_ca_file is not None)
        port = server.add_secure_port(settings.listen, credentials)
    else:
        port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise OSError(f"cannot bind {settings.listen}")
    await server.start()
    mcp = None
    if settings.mcp.enabled:
        # Imported only when MCP is on: the MCP SDK and its pydantic models take ~1 s to import.
        from gateway.mcp_limits import ConnectionLimits, RefusalAudit
        from gateway.mcp_server import create_mcp_app, start_mcp_server

        limits = ConnectionLimits(per_address=settings.mcp.max_connections_per_address,
                                  total=settings.mcp.max_connections,
                                  audit=RefusalAudit(pipeline.tracer, authenticator))
        try:
            handle = await start_mcp_server(
                create_mcp_app(
                    pipeline, authenticator, version=__version__,
                    allowed_hosts=settings.mcp.allowed_hosts,
                    allowed_origins=settings.mcp.allowed_origins,
                    resource_url=settings.mcp.resource_url,
                    authorization_servers=[settings.identity.issuer]
                    if settings.identity.issuer else (),
                    max_body_bytes=settings.max_message_bytes, in_flight=in_flight),
                settings.mcp.listen, limits=limits)
        except BaseException:
            await server.stop(None)
            await _close_all(closers)
            telemetry.shutdown()
            raise
        mcp = handle
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    readiness = Readiness(health_servicer, SERVICE_NAME,
                          readiness_checks(policy, settings.policy, sandbox, telemetry))
    await readiness.refresh()
    watcher = asyncio.create_task(readiness.run(), name="readiness")
    closers.append(watcher.cancel)
    # Built on first use otherwise: the search index and the sandbox SDK (seconds for
    # thousands of operations), ahead of the first call but not on the way to SERVING.
    warm = asyncio.create_task(_warm(pipeline, lazy_apps), name="warm-catalog")
    closers.append(warm.cancel)
    if settings.audit.file and settings.audit.checkpoint_key_file:
        signer = asyncio.create_task(_checkpoint_forever(telemetry, settings.audit),
                                     name="audit-checkpoint")
        closers.append(signer.cancel)
    gw = GatewayServer(grpc_server=server, port=port, pipeline=pipeline,
                       authenticator=authenticator, telemetry=telemetry,
                       health=health_servicer, _closers=closers, mcp=mcp,
                       audit=settings.audit, in_flight=in_flight)
    log.info("serving", listen=settings.listen, port=port, operations=len(catalog.operations),
             policy_revision=policy.revision)
    return gw, port
