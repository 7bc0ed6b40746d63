"""A session belongs to a principal *and the roles it ran with* (review round 3, lead).

Sessions were keyed on (tenant, principal id) only, so a second token of the same subject with
fewer roles — a narrower credential, or one issued after a role was revoked — reached the
variables (and the data fetched into them) of a session built with the broader roles. Against
the real gateway over gRPC, with two static tokens for one subject.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_support import RunningGateway, code_request, gateway_settings, md
from google.protobuf import json_format
from waiting import scaled

from gateway.config import IdentitySettings
from gateway.models import Principal

pytestmark = pytest.mark.timeout(600)

SUBJECT = {"id": "shared-1", "tenant": "demo"}
TOKENS = {
    "wide": Principal(roles=("agent", "finance"), **SUBJECT),
    "narrow": Principal(roles=("agent",), **SUBJECT),
    "wide-reordered": Principal(roles=("finance", "agent"), **SUBJECT),
}


@pytest.fixture(scope="module")
def gw(backends: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
       ) -> Iterator[RunningGateway]:
    state: Path = tmp_path_factory.mktemp("session-roles")
    running = RunningGateway(gateway_settings(state, backends,
                                              identity=IdentitySettings(tokens=TOKENS)))
    try:
        yield running
    finally:
        running.stop()


def _run(gw: RunningGateway, token: str, source: str) -> Any:
    resp = gw.stub.Execute(code_request(source, session_id="s1"), metadata=md(token),
                           timeout=scaled(120))
    return json_format.MessageToDict(resp.result) if resp.HasField("result") else None


def test_a_narrower_token_of_the_same_subject_never_sees_the_session_state(
        gw: RunningGateway) -> None:
    assert _run(gw, "wide", "secret = 'fetched with finance'\nsecret") == "fetched with finance"
    # The same subject, session id and tenant, one role fewer: a fresh session, not that one.
    seen = _run(gw, "narrow", "globals().get('secret', 'nothing')")
    assert seen == "nothing"
    # The wider token still has its own state, whatever order its roles come in.
    assert _run(gw, "wide-reordered", "secret") == "fetched with finance"
    # And the narrow session is its own: what it stores the wide one does not see either.
    assert _run(gw, "narrow", "mine = 1\nmine") == 1
    assert _run(gw, "wide", "globals().get('mine', 'absent')") == "absent"
