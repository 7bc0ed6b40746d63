"""Deprecated alias of :mod:`switchboard_client.client`, kept so existing imports keep working.

The client library is its own distribution now (``clients/python``, ``pip install
switchboard-client``; it needs only grpcio and protobuf): import from ``switchboard_client``
instead. This module only re-exports it and will be removed in a later release. One difference
to the old module: :meth:`SwitchboardClient.explain` returns
:class:`switchboard_client.Decision` (the same fields), not ``gateway.models.Decision``.
"""

from __future__ import annotations

from switchboard_client.client import (
    AsyncSwitchboardClient,
    Decision,
    ExecutionResult,
    Manifest,
    OperationInfo,
    OperationMatch,
    StreamEvent,
    SwitchboardClient,
    SwitchboardError,
)

__all__ = [
    "AsyncSwitchboardClient",
    "Decision",
    "ExecutionResult",
    "Manifest",
    "OperationInfo",
    "OperationMatch",
    "StreamEvent",
    "SwitchboardClient",
    "SwitchboardError",
]
