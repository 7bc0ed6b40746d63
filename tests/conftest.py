"""Shared fixtures: real demo backends and a real in-process gateway, per test module.

Imports happen inside the fixtures so that a test module that needs neither does not pay for
(or depend on) the whole server stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from gateway_support import demo_backends

    state = tmp_path_factory.mktemp("backends")
    with demo_backends(state) as started:
        yield started


@pytest.fixture(scope="module")
def gateway(backends: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from gateway_support import RunningGateway, gateway_settings

    state: Path = tmp_path_factory.mktemp("gateway")
    gw = RunningGateway(gateway_settings(state, backends))
    try:
        yield gw
    finally:
        gw.stop()
