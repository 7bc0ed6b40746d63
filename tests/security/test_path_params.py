"""A path parameter addresses exactly one segment of the operation's own path.

``quote(value, safe="")`` encodes ``/`` but leaves ``.`` and ``..`` intact, and HTTP clients
collapse dot-segments (even above the base path): ``{"id": ".."}`` on ``/s/item/{id}/detail``
would reach ``/s/item/detail`` — another resource. Such values (and the empty one) are refused
as ``invalid_request`` naming the argument, before anything is sent; every other value arrives
as one percent-encoded segment. Checked against a real HTTP backend that records the raw path.
"""

from __future__ import annotations

from typing import Any

import pytest
from tools_support import op, serve_backend

from gateway.errors import InvalidRequest
from gateway.models import BackendSettings, Parameter
from gateway.tools import BackendClient
from gateway.tools.client import build_request_parts

ITEM = op("item", path="/s/item/{id}/detail", params=(Parameter("id", "path", required=True),))


@pytest.mark.parametrize("value", ["", ".", ".."])
def test_dot_segments_and_empty_are_refused(value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        build_request_parts(ITEM, {"id": value})
    assert info.value.field == "arguments.id"


@pytest.mark.parametrize(("value", "segment"), [
    ("...", "..."), (".a", ".a"), ("a..", "a.."), ("../x", "..%2Fx"), ("%2e%2e", "%252e%252e"),
    ("a/b", "a%2Fb"), ("{id}", "%7Bid%7D"), (" ", "%20"), ("?q#f", "%3Fq%23f"), (7, "7"),
    (True, "true"),
])
def test_other_values_are_one_encoded_segment(value: Any, segment: str) -> None:
    path, _, _, _ = build_request_parts(ITEM, {"id": value})
    assert path == f"/s/item/{segment}/detail"


@pytest.mark.parametrize("value", ["..", ".", ""])
async def test_a_real_backend_never_sees_another_resource(value: str) -> None:
    with serve_backend() as backend:
        client = BackendClient({"svc": BackendSettings(name="svc", base_url=backend.url)})
        try:
            with pytest.raises(InvalidRequest) as info:
                await client.call(ITEM, {"id": value})
            assert info.value.field == "arguments.id"
            assert backend.requests == []  # nothing was sent at all
            await client.call(ITEM, {"id": "..x"})
            await client.call(ITEM, {"id": "../s/other"})
        finally:
            await client.aclose()
    assert [r["path"] for r in backend.requests] == [
        "/s/item/..x/detail", "/s/item/..%2Fs%2Fother/detail"]
