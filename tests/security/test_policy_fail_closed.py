"""Fail closed on a vanished policy: what the policy files say is what runs (OPA's file-watcher
semantics). A change that does not compile is rejected and the previous revision keeps serving;
but files that are gone or empty, or a ``decision`` that is missing or undefined, mean *no*
usable policy: every action is denied with the stable reason ``policy_unavailable: ...`` and
readiness (``switchboard.v1.Gateway``) reports NOT_SERVING until a valid policy is back.

The end-to-end half runs a real in-process gateway over a real gRPC channel against the real
demo ledger (a uvicorn subprocess, ``backends`` fixture), hot-reloading a private copy of
``policies/``; every scenario first moves money (so the decision cache holds an allow from the
old revision), breaks the policy, checks the transfer is refused and the ledger saw nothing,
then restores the policy and checks it serves again. The unit half drives the engines directly.

No OPA binary can be installed here (no wheel, npm or Debian package), so "OPA" is the loopback
server of tests/policy_support.py speaking OPA's REST Data API shape (``{}`` when undefined),
as in tests/test_policy_opa.py; a subclass adds OPA's 404.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import policy_support as ps
import pytest
from gateway_support import RunningGateway, error_of, md, tool_request
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.audit import AuditSettings
from gateway.config import Settings, embedded_defaults
from gateway.models import BackendSettings
from gateway.policy import (
    POLICY_UNAVAILABLE,
    EmbeddedPolicyEngine,
    OpaPolicyEngine,
    PolicySettings,
    create_policy_engine,
)
from gateway.policy.bundle import load_bundle
from gateway.sandbox import SandboxSettings
from gateway.tools import IdempotencySettings

# A regorus Engine dropped on a thread other than its creator's is an "unraisable" error.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

SERVICE = "switchboard.v1.Gateway"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TRANSFER = {"from_account": "A1", "to_account": "A2", "amount": 1.0, "currency": "USD"}
DEADLINE_S = 30.0  # generous: 2 shared cores; the watcher polls every 0.1 s, readiness every 2 s

T = TypeVar("T")


def gateway_settings(state: Path, backends: dict[str, Any], policy: PolicySettings) -> Settings:
    """What tests/gateway_support.gateway_settings builds, with one Deno process (kept here so
    this file does not depend on that helper's sandbox defaults)."""
    return replace(
        embedded_defaults(state), listen="127.0.0.1:0", policy=policy,
        sandbox=SandboxSettings(workers=1),
        idempotency=IdempotencySettings(dsn=f"sqlite:///{state / 'idempotency.db'}"),
        audit=AuditSettings(file=state / "audit.jsonl", log_format="json"),
        backends=tuple(BackendSettings(name=n, openapi=f"{s.url}/openapi.json", base_url=s.url)
                       for n, s in backends.items()))


def wait_for(pred: Callable[[], T], what: str, timeout: float = DEADLINE_S) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# End to end: a live gateway whose policy directory is changed under it.


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ps.copy_policies(tmp_path_factory.mktemp("pristine"))


@pytest.fixture(scope="module")
def policy_root(tmp_path_factory: pytest.TempPathFactory, pristine: Path) -> Path:
    root = tmp_path_factory.mktemp("live") / "policies"
    shutil.copytree(pristine, root)
    return root


@pytest.fixture(scope="module")
def live(backends: dict[str, Any], policy_root: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    state = tmp_path_factory.mktemp("gw-fail-closed")
    gw = RunningGateway(gateway_settings(
        state, backends,
        policy=PolicySettings(path=policy_root, reload=True, reload_interval_s=0.1)))
    yield gw
    gw.stop()


def restore(root: Path, pristine: Path) -> None:
    """Put the shipped policy back, as a plain directory (whatever the test left there)."""
    if root.is_symlink() or root.is_file():
        root.unlink()
    elif root.exists():
        shutil.rmtree(root)
    shutil.copytree(pristine, root)


def health(gw: RunningGateway) -> int:
    stub = health_pb2_grpc.HealthStub(gw.channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10).status)


def explain_transfer(gw: RunningGateway) -> Any:
    req = tool_request("ledger.create_transfer", TRANSFER)
    return gw.stub.Explain(req, metadata=md("dev-finance"), timeout=10)


def ledger_rows(backends: dict[str, Any]) -> int:
    """Transfers in the ledger, asked of the ledger itself (not through the gateway)."""
    url = backends["ledger"].url
    return len(httpx.get(f"{url}/transfers", params={"limit": 500}, timeout=10).json())


def transfer(gw: RunningGateway) -> Any:
    return gw.stub.Execute(tool_request("ledger.create_transfer", TRANSFER),
                           metadata=md("dev-finance"), timeout=30)


def assert_serving_and_allowed(gw: RunningGateway, backends: dict[str, Any]) -> None:
    wait_for(lambda: explain_transfer(gw).route == "tool", "the transfer to be allowed")
    wait_for(lambda: health(gw) == SERVING, "readiness SERVING")
    before = ledger_rows(backends)
    assert transfer(gw).decision.route == "tool"
    assert ledger_rows(backends) == before + 1


def assert_denied_everything(gw: RunningGateway, backends: dict[str, Any]) -> None:
    """The transfer is refused with the stable reason, readiness is NOT_SERVING and the
    ledger saw no new transfer."""
    wait_for(lambda: (d := explain_transfer(gw)).route == "deny"
             and POLICY_UNAVAILABLE in d.reasons, "the transfer to be denied, policy_unavailable")
    wait_for(lambda: health(gw) == NOT_SERVING, "readiness NOT_SERVING")
    before = ledger_rows(backends)
    with pytest.raises(grpc.RpcError) as err:
        transfer(gw)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    payload = error_of(err.value)
    assert payload["code"] == "policy_error", payload
    assert POLICY_UNAVAILABLE in payload["details"]["reasons"], payload
    assert ledger_rows(backends) == before  # nothing reached the backend
    assert health(gw) == NOT_SERVING
    # Reads too: no policy means nothing is allowed, not only money.
    read = gw.stub.Explain(tool_request("ledger.get_balance", {"account": "A1"}),
                           metadata=md("dev-agent"), timeout=10)
    assert read.route == "deny"


@pytest.fixture
def scenario(live: RunningGateway, backends: dict[str, Any], policy_root: Path,
             pristine: Path) -> Iterator[Path]:
    """Start from the shipped policy, serving, with the finance transfer allowed (and so in
    the decision cache); afterwards restore it and check the gateway serves again."""
    restore(policy_root, pristine)
    assert_serving_and_allowed(live, backends)
    try:
        yield policy_root
    finally:
        restore(policy_root, pristine)
    assert_serving_and_allowed(live, backends)


def _empty_dir(root: Path) -> None:
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _remove_dir(root: Path) -> None:
    shutil.rmtree(root)


def _replace_by_empty_dir(root: Path) -> None:
    fresh = root.with_name("policies.new")
    fresh.mkdir()
    shutil.rmtree(root)
    fresh.rename(root)


def _rename_decision(root: Path) -> None:
    rego = root / "switchboard" / "routing.rego"
    text = rego.read_text()
    assert "\ndecision := {" in text
    rego.write_text(text.replace("\ndecision := {", "\ndecision_v2 := {"))


def _remove_decision(root: Path) -> None:
    rego = root / "switchboard" / "routing.rego"
    text = rego.read_text()
    rego.write_text(text[: text.index("# METADATA\n# title: Routing decision")])


def _empty_data(root: Path) -> None:
    (root / "switchboard" / "data.json").write_bytes(b"")


def _remove_data(root: Path) -> None:
    (root / "switchboard" / "data.json").unlink()


def _zero_byte_rego(root: Path) -> None:
    (root / "switchboard" / "routing.rego").write_bytes(b"")


def _zero_byte_rego_others_remain(root: Path) -> None:
    # Another valid module stays: the bundle compiles, but nothing defines the decision.
    (root / "switchboard" / "helpers.rego").write_text(
        "package switchboard.helpers\n\nimport rego.v1\n\nready := true\n")
    (root / "switchboard" / "routing.rego").write_bytes(b"")


def _remove_rego_files(root: Path) -> None:
    for p in root.rglob("*.rego"):
        p.unlink()


BREAKS = {
    "emptied directory": _empty_dir,
    "directory removed": _remove_dir,
    "directory replaced by an empty one": _replace_by_empty_dir,
    "decision renamed": _rename_decision,
    "decision removed": _remove_decision,
    "data.json zero bytes": _empty_data,
    "data.json removed": _remove_data,
    "routing.rego zero bytes": _zero_byte_rego,
    "routing.rego zero bytes, another module remains": _zero_byte_rego_others_remain,
    "every .rego removed (tests and data remain)": _remove_rego_files,
}


@pytest.mark.parametrize("label", list(BREAKS))
def test_vanished_policy_denies_everything_until_restored(
    scenario: Path, live: RunningGateway, backends: dict[str, Any], label: str,
) -> None:
    BREAKS[label](scenario)
    assert_denied_everything(live, backends)
    # The restore (and its checks: allowed again, SERVING) is the fixture's teardown.


def test_configmap_swap_to_an_empty_set(
    scenario: Path, live: RunningGateway, backends: dict[str, Any], pristine: Path,
) -> None:
    """Kubernetes mounts a ConfigMap as ``key -> ..data/key`` with ``..data`` a symlink to a
    timestamped directory, swapped atomically; a ConfigMap emptied of its keys swaps ``..data``
    to an empty directory (the old ``switchboard`` entry then dangles)."""
    root = scenario
    _empty_dir(root)
    v1 = root / "..2026_11_25_16_00_00.000000001"
    shutil.copytree(pristine, v1)
    os.symlink(v1.name, root / "..data")
    os.symlink("..data/switchboard", root / "switchboard")
    assert_serving_and_allowed(live, backends)  # the same policy, mounted as a ConfigMap
    v2 = root / "..2026_11_25_16_05_00.000000002"
    v2.mkdir()
    os.symlink(v2.name, root / "..data_tmp")
    os.replace(root / "..data_tmp", root / "..data")  # what the kubelet does
    assert_denied_everything(live, backends)
    # Swapping back to a full set serves again (the fixture then restores a plain directory).
    os.symlink(v1.name, root / "..data_tmp")
    os.replace(root / "..data_tmp", root / "..data")
    assert_serving_and_allowed(live, backends)


def test_syntax_error_keeps_previous_revision_but_not_over_no_policy(
    scenario: Path, live: RunningGateway, backends: dict[str, Any],
) -> None:
    rego = scenario / "switchboard" / "routing.rego"
    original = rego.read_text()
    good = explain_transfer(live).policy_revision
    rego.write_text(original + "\nthis is not rego {\n")
    time.sleep(1.0)  # several reload intervals: nothing may change
    during = explain_transfer(live)
    assert during.route == "tool" and during.policy_revision == good
    assert health(live) == SERVING
    # A broken file appearing where there is no policy does not resurrect the old revision.
    _empty_dir(scenario)
    assert_denied_everything(live, backends)
    (scenario / "switchboard").mkdir()
    rego.write_text(original + "\nthis is not rego {\n")
    time.sleep(1.0)
    assert explain_transfer(live).route == "deny"
    assert health(live) == NOT_SERVING


def test_serve_starts_without_policy_not_serving(
    backends: dict[str, Any], tmp_path: Path, pristine: Path,
) -> None:
    """Like ``opa run`` with an empty directory: the gateway starts, denies everything and is
    not ready; a policy dropped in later is picked up."""
    root = tmp_path / "policies"
    root.mkdir()
    gw = RunningGateway(gateway_settings(
        tmp_path, backends,
        policy=PolicySettings(path=root, reload=True, reload_interval_s=0.1)))
    try:
        assert_denied_everything(gw, backends)
        shutil.rmtree(root)
        shutil.copytree(pristine, root)
        assert_serving_and_allowed(gw, backends)
    finally:
        gw.stop()


class OpaWith404(ps.OpaRestServer):
    """The loopback OPA-shaped server, plus a mode answering 404 for every decision."""

    def answer(self, rule: str, input: Any, query: dict[str, list[str]]) -> tuple[int, bytes]:
        if self.mode == "404":
            return 404, b'{"code":"resource_not_found","message":"not found"}'
        return super().answer(rule, input, query)


def test_opa_without_decision_is_not_serving(backends: dict[str, Any], tmp_path: Path) -> None:
    opa = OpaWith404().start()
    gw = RunningGateway(gateway_settings(
        tmp_path, backends,
        policy=PolicySettings(engine="opa", opa_url=opa.url, timeout_ms=2000)))
    try:
        assert_serving_and_allowed(gw, backends)
        for mode in ("undefined", "404"):
            opa.mode = mode  # OPA with no policy / no decision rule answers {}
            assert_denied_everything(gw, backends)
            opa.mode = "ok"
            assert_serving_and_allowed(gw, backends)
    finally:
        gw.stop()
        opa.stop()


# ---------------------------------------------------------------------------------------------
# The engines directly.


async def _engine(root: Path) -> EmbeddedPolicyEngine:
    eng = EmbeddedPolicyEngine(PolicySettings(path=root, reload=False))
    await eng.start()
    return eng


async def test_engine_empty_dir_then_restore(tmp_path: Path) -> None:
    root = ps.copy_policies(tmp_path)
    eng = await _engine(root)
    try:
        inp = ps.tool(ps.FINANCE, "ledger.create_transfer")
        assert (await eng.decide(inp)).route == "tool"  # cached allow of the old revision
        assert eng.unavailable is None
        shutil.rmtree(root / "switchboard")
        assert await eng.reload_now()
        d = await eng.decide(inp)
        assert d.route == "deny" and d.error_code == "policy_error"
        assert d.reasons[0] == POLICY_UNAVAILABLE and "no .rego policy files" in d.reasons[1]
        assert d.policy_revision == eng.revision == "none"
        assert eng.unavailable and eng.last_reload_error is None
        shutil.copytree(ps.POLICY_DIR / "switchboard", root / "switchboard")
        assert await eng.reload_now()
        assert (await eng.decide(inp)).route == "tool"
        assert eng.unavailable is None
    finally:
        await eng.close()


async def test_engine_renamed_decision_never_serves_cached_allow(tmp_path: Path) -> None:
    root = ps.copy_policies(tmp_path)
    eng = await _engine(root)
    try:
        inp = ps.tool(ps.FINANCE, "ledger.create_transfer")
        for _ in range(3):
            assert (await eng.decide(inp)).route == "tool"
        rego = root / "switchboard" / "routing.rego"
        rego.write_text(rego.read_text().replace("\ndecision := {", "\ndecision_v2 := {"))
        assert await eng.reload_now()
        for _ in range(3):
            d = await eng.decide(inp)
            assert d.route == "deny" and POLICY_UNAVAILABLE in d.reasons, d.reasons
        assert "undefined" in (eng.unavailable or "")
        assert eng.last_reload_error is None  # loaded (as OPA would), not rejected
    finally:
        await eng.close()


@pytest.mark.parametrize("how", ["zero bytes", "removed", "empty object"])
async def test_engine_data_gone_is_deny_not_previous(tmp_path: Path, how: str) -> None:
    root = ps.copy_policies(tmp_path)
    eng = await _engine(root)
    try:
        inp = ps.tool(ps.FINANCE, "ledger.create_transfer")
        assert (await eng.decide(inp)).route == "tool"
        old = eng.revision
        data = root / "switchboard" / "data.json"
        if how == "removed":
            data.unlink()
        else:
            data.write_text("" if how == "zero bytes" else "{}")
        assert await eng.reload_now()
        assert eng.revision != old
        d = await eng.decide(inp)
        assert d.route == "deny" and POLICY_UNAVAILABLE in d.reasons
        assert "no data file is loaded" in (eng.unavailable or "")
    finally:
        await eng.close()


async def test_engine_malformed_decision_for_every_input(tmp_path: Path) -> None:
    root = ps.copy_policies(tmp_path)
    eng = await _engine(root)
    try:
        rego = root / "switchboard" / "routing.rego"
        rego.write_text(rego.read_text().replace('"route": route,', '"route": "allow",'))
        assert await eng.reload_now()
        for inp in (ps.tool(ps.FINANCE, "ledger.create_transfer"), ps.code_run(ps.AGENT)):
            d = await eng.decide(inp)
            assert d.route == "deny" and "decision.route" in d.reasons[0]
            assert POLICY_UNAVAILABLE in d.reasons
        assert "malformed" in (eng.unavailable or "")
    finally:
        await eng.close()


async def test_engine_starts_without_policy(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    eng = await _engine(tmp_path / "p")
    try:
        d = await eng.decide(ps.code_run(ps.AGENT))
        assert d.route == "deny" and d.reasons[0] == POLICY_UNAVAILABLE
        assert eng.unavailable and eng.revision == "none"
    finally:
        await eng.close()


async def test_engine_sees_symlink_swap_to_same_size_same_mtime_files(tmp_path: Path) -> None:
    """An attacker racing the watcher: the policy directory is a symlink swapped to a copy
    whose files have the same sizes and (forged) mtimes but other content."""
    v1 = ps.copy_policies(tmp_path / "v1")
    v2 = ps.copy_policies(tmp_path / "v2")
    data2 = v2 / "switchboard" / "data.json"
    text = data2.read_text()
    assert '"payments": ["finance"]' in text
    data2.write_text(text.replace('"payments": ["finance"]', '"payments": ["nobody!"]'))
    for p in v1.rglob("*"):
        twin = v2 / p.relative_to(v1)
        st = p.stat()
        os.utime(twin, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert twin.stat().st_size == st.st_size
    link = tmp_path / "policies"
    os.symlink(v1, link)
    eng = await _engine(link)
    try:
        inp = ps.tool(ps.FINANCE, "ledger.create_transfer")
        assert (await eng.decide(inp)).route == "tool"
        os.symlink(v2, tmp_path / "tmp-link")
        os.replace(tmp_path / "tmp-link", link)
        assert await eng.reload_now()
        assert (await eng.decide(inp)).route == "deny"
    finally:
        await eng.close()


def test_zero_byte_rego_is_absent_not_a_parse_error(tmp_path: Path) -> None:
    root = ps.copy_policies(tmp_path)
    (root / "switchboard" / "extra.rego").write_text("package switchboard.extra\n\nx := 1\n")
    full = load_bundle(root)
    (root / "switchboard" / "extra.rego").write_bytes(b"")
    emptied = load_bundle(root)
    assert [m for m, _ in emptied.modules] == ["switchboard/routing.rego"]
    assert emptied.revision != full.revision  # the change is still seen


async def test_opa_engine_undefined_and_404() -> None:
    server = OpaWith404().start()
    eng = create_policy_engine(PolicySettings(engine="opa", opa_url=server.url,
                                              timeout_ms=2000, reload=False))
    assert isinstance(eng, OpaPolicyEngine)
    await eng.start()
    try:
        inp = ps.tool(ps.FINANCE, "ledger.create_transfer")
        assert eng.unavailable is None and (await eng.decide(inp)).route == "tool"
        for mode, why in (("undefined", "undefined"), ("404", "HTTP 404")):
            server.mode = mode
            assert await eng.probe() is not None
            assert why in (eng.unavailable or "")
            d = await eng.decide(inp)
            assert d.route == "deny" and d.error_code == "policy_error"
            assert POLICY_UNAVAILABLE in d.reasons, d.reasons
            server.mode = "ok"
            assert await eng.probe() is None and eng.unavailable is None
            assert (await eng.decide(inp)).route == "tool"
    finally:
        await eng.close()
        server.stop()


async def test_opa_engine_probes_in_the_background() -> None:
    server = ps.OpaRestServer().start()
    eng = create_policy_engine(PolicySettings(engine="opa", opa_url=server.url,
                                              timeout_ms=2000, reload_interval_s=0.1))
    await eng.start()
    try:
        assert eng.unavailable is None
        server.mode = "undefined"
        deadline = time.monotonic() + DEADLINE_S
        while eng.unavailable is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert eng.unavailable is not None
        server.mode = "ok"
        while eng.unavailable is not None and time.monotonic() < deadline + DEADLINE_S:
            await asyncio.sleep(0.05)
        assert eng.unavailable is None
    finally:
        await eng.close()
        server.stop()


def test_policy_check_flags_a_missing_decision(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.policy import cli_policy_check

    root = ps.copy_policies(tmp_path)
    assert cli_policy_check(root) == 0
    _rename_decision(root)
    assert cli_policy_check(root) == 1
    assert "NOT_SERVING" in capsys.readouterr().out

