"""Security teams edit Rego/data and routing changes, live: through a running gateway, without
a restart, with in-flight calls unaffected and a broken edit rejected."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_support import RunningGateway, gateway_settings, md, tool_request
from waiting import bound, scaled, wait_until_sync

from gateway.policy import PolicySettings, default_policy_dir
from gateway.sandbox import SandboxSettings

RELOAD_S = 0.2  # the live gateway's policy reload interval

TRANSFER = {"from_account": "A1", "to_account": "A2", "amount": 1.0, "currency": "USD"}


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("policies") / "policies"
    shutil.copytree(default_policy_dir(), target)
    return target


@pytest.fixture(scope="module")
def live(backends: dict[str, Any], policy_dir: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    state = tmp_path_factory.mktemp("gw-e2e")
    settings = gateway_settings(
        state, backends,
        policy=PolicySettings(path=policy_dir, reload=True, reload_interval_s=RELOAD_S),
        sandbox=SandboxSettings(workers=1))
    gw = RunningGateway(settings)
    yield gw
    gw.stop()


def _explain(gw: RunningGateway) -> Any:
    req = tool_request("ledger.create_transfer", TRANSFER)
    return gw.stub.Explain(req, metadata=md("dev-agent"), timeout=10)


def _wait_for(pred: Any, timeout: float = 120.0) -> Any:
    """``pred``'s first truthy value, or its last one after ``timeout`` (scaled) passed."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_editing_data_changes_routing_live(live: RunningGateway, policy_dir: Path) -> None:
    before = _explain(live)
    assert before.route == "deny"
    data_file = policy_dir / "switchboard" / "data.json"
    original = data_file.read_text()
    data = json.loads(original)
    data["grants"]["payments"] = [*data["grants"]["payments"], "agent"]
    try:
        started = time.monotonic()
        data_file.write_text(json.dumps(data))
        after = _wait_for(lambda: (d := _explain(live)).route == "tool" and d)
        assert after, "the edit did not take effect"
        # Picked up by the reloader, not by something much slower (far below _wait_for's 120 s).
        assert time.monotonic() - started < bound(RELOAD_S)
        assert after.policy_revision != before.policy_revision
    finally:
        data_file.write_text(original)
    restored = _wait_for(lambda: (d := _explain(live)).route == "deny" and d)
    assert restored and restored.policy_revision == before.policy_revision


def test_broken_policy_is_rejected_and_previous_keeps_serving(live: RunningGateway,
                                                              policy_dir: Path) -> None:
    before = _explain(live)
    rego = policy_dir / "switchboard" / "routing.rego"
    original = rego.read_text()
    try:
        engine = live.server.pipeline.policy if live.server else None
        assert engine is not None
        rego.write_text(original + "\nthis is not rego {\n")
        # The reloader saw the broken file and rejected it (a condition, not a sleep).
        wait_until_sync(lambda: getattr(engine, "last_reload_error", None), 120,
                        what="the broken policy being rejected")
        during = _explain(live)
        assert during.route == before.route == "deny"
        assert during.policy_revision == before.policy_revision
        ok = live.stub.Execute(tool_request("ledger.get_balance", {"account": "A1"}),
                               metadata=md("dev-agent"), timeout=10)
        assert ok.decision.policy_revision == before.policy_revision
    finally:
        rego.write_text(original)
