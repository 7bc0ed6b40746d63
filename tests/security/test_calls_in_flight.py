"""One principal cannot hold every call slot of the gateway: its calls in flight, over the
gRPC and MCP doors together, are capped (``max_calls_in_flight_per_principal``); one over
the cap is refused ``resource_exhausted`` before any work and audited with the principal,
while other principals keep being served. A real in-process gateway with real demo
backends; the held calls wait on a gate wrapped around the real search stage, so that they
stay in flight exactly as long as the test says."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx2
import pytest
from gateway_support import RunningGateway, gateway_settings, mcp_endpoint
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from waiting import scaled, wait_until_sync

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway.config import McpSettings

CAP = 3
AGENT = ("demo", "agent-1")


@pytest.fixture(scope="module")
def capped(backends: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RunningGateway]:
    state: Path = tmp_path_factory.mktemp("capped")
    gw = RunningGateway(gateway_settings(
        state, backends, max_calls_in_flight_per_principal=CAP,
        mcp=McpSettings(enabled=True, listen="127.0.0.1:0")))  # serve's own MCP door
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def mcp_url(capped: RunningGateway) -> Iterator[str]:
    assert capped.server is not None and capped.server.mcp_port  # serve's own door
    yield from mcp_endpoint(capped)


class Gate:
    """Holds every search of ``query`` until opened (the real search runs after)."""

    def __init__(self, gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        assert gateway.server is not None
        pipeline = gateway.server.pipeline
        search = pipeline.search

        async def gated(principal: Any, query: str, limit: int) -> Any:
            if query == "held":
                await asyncio.to_thread(self.open.wait, scaled(120))
            return await search(principal, query, limit)

        monkeypatch.setattr(pipeline, "search", gated)


def _search(gateway: RunningGateway, token: str, query: str) -> Any:
    return gateway.stub.SearchOperations(pb.SearchOperationsRequest(query=query),
                                         metadata=[("authorization", f"Bearer {token}")],
                                         timeout=scaled(180))


def _open(gateway: RunningGateway) -> int:
    assert gateway.server is not None and gateway.server.in_flight is not None
    return gateway.server.in_flight.open.get(AGENT, 0)


async def _mcp_search(url: str, token: str) -> Any:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http)) as client,  # type: ignore[arg-type]
    ):
        return await client.call_tool("search_operations", {"query": "balance"})


def test_a_principal_at_its_cap_is_refused_on_both_doors_and_others_are_served(
        capped: RunningGateway, mcp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(capped, monkeypatch)
    with ThreadPoolExecutor(CAP) as pool:
        held = [pool.submit(_search, capped, "dev-agent", "held") for _ in range(CAP)]
        try:
            wait_until_sync(lambda: _open(capped) == CAP, scaled(120), what="the cap held")
            with pytest.raises(grpc.RpcError) as refused:
                _search(capped, "dev-agent", "balance")
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "calls in flight" in (refused.value.details() or "")
            over_mcp = asyncio.run(_mcp_search(mcp_url, "dev-agent"))
            assert over_mcp.is_error is True
            assert "resource_exhausted" in str(over_mcp.content[0])
            other = _search(capped, "dev-finance", "balance")  # another principal: served
            assert other.operations
            assert _open(capped) == CAP  # the refusals never held a slot
        finally:
            gate.open.set()
        assert all(f.result().operations is not None for f in held)
    wait_until_sync(lambda: _open(capped) == 0, scaled(60), what="every slot given back")
    assert _search(capped, "dev-agent", "balance").operations  # the whole cap again
    assert asyncio.run(_mcp_search(mcp_url, "dev-agent")).is_error is False


def test_a_refused_call_is_audited_with_its_principal(
        capped: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    gate = Gate(capped, monkeypatch)
    with ThreadPoolExecutor(CAP) as pool:
        held = [pool.submit(_search, capped, "dev-agent", "held") for _ in range(CAP)]
        try:
            wait_until_sync(lambda: _open(capped) == CAP, scaled(120), what="the cap held")
            with pytest.raises(grpc.RpcError):
                _search(capped, "dev-agent", "refused-one")
        finally:
            gate.open.set()
        for f in held:
            f.result()
    server = capped.server
    assert server is not None and capped.settings.audit.file is not None
    server.telemetry.force_flush()
    records = [json.loads(line) for line in
               Path(capped.settings.audit.file).read_text().splitlines()]
    refused = [r["attributes"] for r in records
               if r["attributes"].get("switchboard.outcome") == "resource_exhausted"
               and r["attributes"].get("switchboard.transport") == "grpc"]
    assert refused, "no record of the refused call"
    assert refused[-1]["switchboard.principal.id"] == "agent-1"
