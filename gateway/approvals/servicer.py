"""The ``switchboard.v1.ApprovalsService`` gRPC service. Identity, tracing and error mapping come
from the gateway's interceptor, as for ``Gateway``."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import struct_pb2

from gateway._proto.switchboard.v1 import approvals_pb2 as apb
from gateway._proto.switchboard.v1 import approvals_pb2_grpc as apb_grpc
from gateway.approvals.service import ApprovalService, describe
from gateway.approvals.store import ApprovalRecord
from gateway.audit.redact import DigestKey
from gateway.interceptors import current_principal
from gateway.values import check_id

__all__ = ["ApprovalsServicer", "add_approvals_service", "approval_pb"]

SERVICE_NAME: str = apb.DESCRIPTOR.services_by_name["ApprovalsService"].full_name


def approval_pb(rec: ApprovalRecord, key: DigestKey) -> apb.Approval:
    """The proto's ``action_sha256`` field carries the keyed ``hmac-sha256:`` digest."""
    d = describe(rec, key)
    action = struct_pb2.Struct()
    action.update(rec.action)
    return apb.Approval(
        approval_id=rec.id, state=d["state"], tenant=rec.tenant,
        requester_id=rec.requester_id, request_id=rec.request_id, kind=rec.kind,
        operation=rec.operation, action=action, reasons=list(rec.reasons),
        approver_roles=list(rec.roles), created_at=d["created_at"],
        expires_at=d["expires_at"], decided_by=rec.decided_by, comment=rec.comment,
        trace_id=rec.trace_id, action_sha256=d["action_hmac"])


class ApprovalsServicer(apb_grpc.ApprovalsServiceServicer):
    def __init__(self, service: ApprovalService) -> None:
        self.service = service

    def _pb(self, rec: ApprovalRecord) -> apb.Approval:
        return approval_pb(rec, self.service.digest_key)

    async def ListApprovals(self, request: apb.ListApprovalsRequest,
                            context: grpc.aio.ServicerContext[Any, Any],
                            ) -> apb.ListApprovalsResponse:
        state = request.state or "pending"
        found = await self.service.list(current_principal(), None if state == "all" else state,
                                        request.limit or 100)
        return apb.ListApprovalsResponse(approvals=[self._pb(r) for r in found])

    async def GetApproval(self, request: apb.GetApprovalRequest,
                          context: grpc.aio.ServicerContext[Any, Any],
                          ) -> apb.GetApprovalResponse:
        check_id(request.approval_id, "approval_id", "approval_id")
        return apb.GetApprovalResponse(approval=self._pb(
            await self.service.get(current_principal(), request.approval_id)))

    async def Approve(self, request: apb.ApproveRequest,
                      context: grpc.aio.ServicerContext[Any, Any]) -> apb.ApproveResponse:
        check_id(request.approval_id, "approval_id", "approval_id")
        return apb.ApproveResponse(approval=self._pb(await self.service.decide(
            current_principal(), request.approval_id, approve=True, comment=request.comment)))

    async def Reject(self, request: apb.RejectRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> apb.RejectResponse:
        check_id(request.approval_id, "approval_id", "approval_id")
        return apb.RejectResponse(approval=self._pb(await self.service.decide(
            current_principal(), request.approval_id, approve=False, comment=request.comment)))


def add_approvals_service(service: ApprovalService, server: grpc.aio.Server) -> str:
    """Register the service on ``server``; returns its full name (for reflection)."""
    apb_grpc.add_ApprovalsServiceServicer_to_server(  # type: ignore[no-untyped-call]
        ApprovalsServicer(service), server)
    return SERVICE_NAME
