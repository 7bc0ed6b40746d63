"""The policy decides the manifest and the routes search shows (``advertise``), once per role set.

A real catalog (the demo apps plus a payments-tagged operation from an OpenAPI document), the
real embedded engine over a copy of the shipped policies, and the OPA engine against the
OPA-REST-shaped test server. The pipeline is built without a sandbox or backends: discovery
never reaches them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import policy_support as ps
import pytest
from opentelemetry import trace

from gateway.catalog import Catalog, load_catalog_sync, operations_from_openapi
from gateway.errors import UnknownOperation
from gateway.models import BackendSettings, Principal
from gateway.pipeline import Pipeline
from gateway.policy import (
    EmbeddedPolicyEngine,
    OpaPolicyEngine,
    PolicyEngine,
    PolicySettings,
    parse_advertise,
)

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

AGENT = Principal(id="agent-1", tenant="demo", roles=("agent",))
FINANCE = Principal(id="finance-1", tenant="demo", roles=("agent", "finance"))
FINANCE_2 = Principal(id="finance-2", tenant="demo", roles=("finance", "agent", "finance"))
OUTSIDER = Principal(id="x", tenant="acme", roles=("agent", "finance"))

# A Square-like payments API: its tag alone makes it a compliance operation under the shipped
# policy (data.json lists "payments" in compliance_tags; grants: finance).
PAYMENTS_SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "payments", "version": "1"},
    "paths": {
        "/v2/payments": {
            "post": {"operationId": "CreatePayment", "tags": ["Payments"],
                     "summary": "Create a card payment",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"type": "object", "required": ["amount"],
                                    "properties": {"amount": {"type": "integer"}}}}}},
                     "responses": {"200": {"description": "ok"}}},
            "get": {"operationId": "ListPayments", "tags": ["Payments"],
                    "summary": "List payments", "responses": {"200": {"description": "ok"}}},
        },
        "/v2/locations": {
            "get": {"operationId": "ListLocations", "tags": ["Locations"],
                    "summary": "List business locations",
                    "responses": {"200": {"description": "ok"}}},
        },
    },
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    demo = load_catalog_sync([BackendSettings(name="ledger", app="gateway.demo.ledger:app"),
                              BackendSettings(name="workspace", app="gateway.demo.workspace:app")])
    square = operations_from_openapi(BackendSettings(name="square"), PAYMENTS_SPEC)
    return Catalog([*demo.operations, *square])


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    root = ps.copy_policies(tmp_path)
    data_file = root / "switchboard" / "data.json"
    data = json.loads(data_file.read_text())
    data["tenants"]["demo"]["backends"].append("square")
    data_file.write_text(json.dumps(data))
    return root


class Counting:
    """Wraps an engine and counts its evaluations (the real engine still answers)."""

    def __init__(self, inner: PolicyEngine) -> None:
        self.inner = inner
        self.advertised = 0
        self.decided = 0

    @property
    def revision(self) -> str:
        return self.inner.revision

    @property
    def unavailable(self) -> str | None:
        return self.inner.unavailable

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def decide(self, input: dict[str, Any]) -> Any:
        self.decided += 1
        return await self.inner.decide(input)

    async def advertise(self, input: dict[str, Any]) -> Any:
        self.advertised += 1
        return await self.inner.advertise(input)


def pipeline(catalog: Catalog, engine: PolicyEngine) -> Pipeline:
    none = cast(Any, None)
    return Pipeline(catalog=catalog, policy=engine, client=none, tools=none, sandbox=none,
                    tracer=trace.get_tracer("test"))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _embedded(root: Path) -> EmbeddedPolicyEngine:
    engine = EmbeddedPolicyEngine(PolicySettings(path=root, reload=False))
    await engine.start()
    return engine


def dedicated(tools: list[Any]) -> set[str]:
    return {t.operation for t in tools if t.kind == "dedicated"}


def test_the_policy_decides_the_manifest(catalog: Catalog, policy_dir: Path) -> None:
    async def main() -> None:
        p = pipeline(catalog, await _embedded(policy_dir))
        finance = dedicated(await p.manifest(FINANCE))
        # Every payments-tagged operation is tool-only for finance under the shipped policy:
        # the ledger's (tagged by the demo spec, create_transfer also pinned by data.json) and
        # the Square-like ones (only their OpenAPI tag "payments").
        assert finance == {"ledger.create_transfer", "ledger.get_transfer",
                           "ledger.list_transfers", "square.create_payment",
                           "square.list_payments"}
        assert dedicated(await p.manifest(AGENT)) == set()
        assert dedicated(await p.manifest(OUTSIDER)) == set()
        names = [t.name for t in await p.manifest(FINANCE)]
        assert names[:3] == ["search_operations", "describe_operation", "execute_code"]
        assert "square__create_payment" in names

    run(main())


def test_search_and_describe_routes_for_this_caller(catalog: Catalog, policy_dir: Path) -> None:
    async def main() -> None:
        p = pipeline(catalog, await _embedded(policy_dir))
        query = "payments and business locations"
        hits = {h.name: h.route for h in await p.search(FINANCE, query, 20)}
        assert hits["square.create_payment"] == "tool"
        assert hits["square.list_locations"] == "code"
        agent_hits = {h.name: h.route for h in await p.search(AGENT, query, 20)}
        assert "square.create_payment" not in agent_hits  # denied both ways: not shown
        assert agent_hits["square.list_locations"] == "code"
        # Plain operations are "code" (callable from execute_code), not "tool": only
        # advertised dedicated tools are.
        assert (await p.describe(AGENT, "ledger.get_balance"))["route"] == "code"
        assert (await p.describe(FINANCE, "ledger.create_transfer"))["route"] == "tool"
        with pytest.raises(UnknownOperation):
            await p.describe(AGENT, "ledger.create_transfer")
        assert await p.search(OUTSIDER, "list accounts", 10) == []

    run(main())


def test_one_advertise_evaluation_per_role_set_catalog_and_policy_revision(
        catalog: Catalog, policy_dir: Path) -> None:
    async def main() -> None:
        engine = Counting(await _embedded(policy_dir))
        p = pipeline(catalog, engine)
        for _ in range(3):
            await p.manifest(FINANCE)
            await p.search(FINANCE, "list accounts", 10)
            await p.search(FINANCE, "payments", 50)
            await p.describe(FINANCE, "ledger.get_balance")
            await p.manifest(FINANCE_2)  # same tenant and role set, other id and order
        assert engine.advertised == 1
        assert engine.decided == 0  # no decision per candidate operation
        await p.manifest(AGENT)
        assert engine.advertised == 2
        # A policy change (new revision) asks again; the old answer is never served.
        data_file = policy_dir / "switchboard" / "data.json"
        data = json.loads(data_file.read_text())
        data["grants"]["payments"] = ["agent"]
        data_file.write_text(json.dumps(data))
        assert await cast(EmbeddedPolicyEngine, engine.inner).reload_now()
        assert "ledger.create_transfer" in dedicated(await p.manifest(AGENT))
        assert engine.advertised == 3
        assert p.discovery_evaluations == 3

    run(main())


BROKEN_ADVERTISE = {
    "missing": None,
    "undefined": "advertise := x if {\n\tx := 1\n\tfalse\n}\n",
    "not an object": 'advertise := ["ledger.create_transfer"]\n',
    "tools not names": 'advertise := {"tools": [1], "code": []}\n',
    "no code key": 'advertise := {"tools": {"ledger.create_transfer"}}\n',
    "both tool and code": 'advertise := {"tools": {"ledger.get_balance"}, '
                          '"code": {"ledger.get_balance"}}\n',
    "runtime error": 'advertise := {"tools": {x | some o in input.operations; '
                     'x := o.name / 0}, "code": set()}\n',
}


def _replace_advertise(root: Path, replacement: str | None) -> None:
    rego = root / "switchboard" / "routing.rego"
    text = rego.read_text()
    start = text.index("# METADATA\n# title: Discovery")
    end = text.index("advertise := {", start)
    end = text.index("\n", end) + 1
    rego.write_text(text[:start] + (replacement or "") + text[end:])


@pytest.mark.parametrize("case", sorted(BROKEN_ADVERTISE))
def test_a_broken_advertise_rule_advertises_nothing(catalog: Catalog, policy_dir: Path,
                                                    case: str) -> None:
    _replace_advertise(policy_dir, BROKEN_ADVERTISE[case])

    async def main() -> None:
        engine = Counting(await _embedded(policy_dir))
        assert engine.unavailable is None  # the decision itself still serves
        p = pipeline(catalog, engine)
        tools = await p.manifest(FINANCE)
        assert [t.kind for t in tools] == ["meta", "meta", "meta"]
        assert await p.search(FINANCE, "list accounts", 10) == []
        with pytest.raises(UnknownOperation):
            await p.describe(FINANCE, "ledger.get_balance")
        found = await p.discovery(FINANCE)
        assert found.error and not found.tools and not found.code
        await p.manifest(FINANCE)
        assert engine.advertised == 5  # a failure is never cached: the next call asks again
        # The tool call itself is still decided by `decision`, on its own.
        decision = await engine.decide(ps.tool(FINANCE, "ledger.create_transfer"))
        assert decision.route == "tool"

    run(main())


def test_no_usable_decision_advertises_nothing(catalog: Catalog, policy_dir: Path) -> None:
    rego = policy_dir / "switchboard" / "routing.rego"
    text = rego.read_text()
    rego.write_text(text[: text.index("# METADATA\n# title: Routing decision")])

    async def main() -> None:
        engine = Counting(await _embedded(policy_dir))
        assert engine.unavailable is not None
        p = pipeline(catalog, engine)
        assert dedicated(await p.manifest(FINANCE)) == set()
        assert engine.advertised == 0  # not even asked

    run(main())


def test_parse_advertise_accepts_sets_and_arrays() -> None:
    assert parse_advertise({"tools": ["a"], "code": {"b"}}) == (frozenset({"a"}),
                                                                frozenset({"b"}))
    for bad in (None, [], {"tools": "a", "code": []}, {"tools": [], "code": None}):
        with pytest.raises(Exception, match="advertise"):
            parse_advertise(bad)


@pytest.fixture(scope="module")
def opa_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ps.OpaRestServer]:
    root = ps.copy_policies(tmp_path_factory.mktemp("opa"))
    data_file = root / "switchboard" / "data.json"
    data = json.loads(data_file.read_text())
    data["tenants"]["demo"]["backends"].append("square")
    data_file.write_text(json.dumps(data))
    srv = ps.OpaRestServer(root).start()
    yield srv
    srv.stop()


def test_opa_engine_advertises_the_same(catalog: Catalog, policy_dir: Path,
                                        opa_server: ps.OpaRestServer) -> None:
    async def main() -> None:
        opa = OpaPolicyEngine(PolicySettings(engine="opa", opa_url=opa_server.url,
                                             reload=False))
        await opa.start()
        try:
            embedded = pipeline(catalog, await _embedded(policy_dir))
            remote = pipeline(catalog, opa)
            for who in (AGENT, FINANCE, OUTSIDER):
                a, b = await embedded.discovery(who), await remote.discovery(who)
                assert (a.tools, a.code) == (b.tools, b.code)
                assert b.error is None
            opa_server.mode = "undefined"
            remote_fresh = pipeline(catalog, opa)
            found = await remote_fresh.discovery(FINANCE)
            assert found.error and not found.tools and not found.code
        finally:
            opa_server.mode = "ok"
            await opa.close()

    run(main())
