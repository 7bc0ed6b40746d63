"""``switchboard approvals list|show|approve|reject``: the approvers' command line, a client of
the ``switchboard.v1.ApprovalsService`` service (so it acts as the principal its token names)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import grpc
from google.protobuf import json_format

from gateway._proto.switchboard.v1 import approvals_pb2 as apb
from gateway._proto.switchboard.v1 import approvals_pb2_grpc as apb_grpc

__all__ = ["add_parser", "approval_json"]


def approval_json(a: apb.Approval) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(a, preserving_proto_field_name=True)
    out.setdefault("action", {})
    return out


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.ca_file:
        with open(args.ca_file, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(args.target, creds)
    return grpc.insecure_channel(args.target)


def _fail(exc: grpc.RpcError) -> int:
    call: Any = exc
    trailers = {str(k): v for k, v in (call.trailing_metadata() or ())}
    raw = trailers.get("switchboard-error")
    code = json.loads(raw).get("code", "") if raw else call.code().name
    print(f"switchboard approvals: {code}: {call.details()}", file=sys.stderr)
    return 1


def _run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("SWITCHBOARD_TOKEN", "")
    if not token:
        print("switchboard approvals: a token is needed (--token or $SWITCHBOARD_TOKEN)",
              file=sys.stderr)
        return 2
    metadata = (("authorization", f"Bearer {token}"),)
    with _channel(args) as channel:
        stub = apb_grpc.ApprovalsServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            if args.approvals_cmd == "list":
                found = stub.ListApprovals(
                    apb.ListApprovalsRequest(state=args.state, limit=args.limit),
                    metadata=metadata, timeout=args.timeout).approvals
                if args.json:
                    print(json.dumps([approval_json(a) for a in found], indent=2))
                    return 0
                if not found:
                    print(f"no {args.state} approvals")
                for a in found:
                    amount = dict(a.action).get("arguments", {})
                    print(f"{a.approval_id}  {a.state:<9} {a.operation}  by {a.requester_id}  "
                          f"roles {','.join(a.approver_roles)}  until {a.expires_at}")
                    print(f"    {json.dumps(amount, sort_keys=True, default=str)}")
                return 0
            if args.approvals_cmd == "show":
                shown = stub.GetApproval(apb.GetApprovalRequest(approval_id=args.approval_id),
                                         metadata=metadata, timeout=args.timeout).approval
                print(json.dumps(approval_json(shown), indent=2))
                return 0
            comment = args.comment or ""
            if args.approvals_cmd == "approve":
                done = stub.Approve(apb.ApproveRequest(approval_id=args.approval_id,
                                                       comment=comment),
                                    metadata=metadata, timeout=args.timeout).approval
            else:
                done = stub.Reject(apb.RejectRequest(approval_id=args.approval_id,
                                                     comment=comment),
                                   metadata=metadata, timeout=args.timeout).approval
            print(f"{done.approval_id}: {done.state} by {done.decided_by}"
                  + (f" ({done.comment})" if done.comment else ""))
            return 0
        except grpc.RpcError as exc:
            return _fail(exc)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("approvals", help="list, show, approve or reject held actions")
    asub = p.add_subparsers(dest="approvals_cmd", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--target", default="127.0.0.1:50051", help="gateway HOST:PORT")
        q.add_argument("--token", help="the approver's token (default $SWITCHBOARD_TOKEN)")
        q.add_argument("--ca-file", help="CA bundle: connect with TLS")
        q.add_argument("--timeout", type=float, default=30.0)

    q = asub.add_parser("list", help="approvals of your tenant (pending by default)")
    q.add_argument("--state", default="pending",
                   choices=["pending", "approved", "rejected", "consumed", "expired", "all"])
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--json", action="store_true")
    common(q)
    q = asub.add_parser("show", help="one approval with the exact (masked) action")
    q.add_argument("approval_id")
    common(q)
    for verb in ("approve", "reject"):
        q = asub.add_parser(verb, help=f"{verb} a pending approval")
        q.add_argument("approval_id")
        q.add_argument("--comment", "-m", help="why (kept on the approval and in the audit)")
        common(q)
    p.set_defaults(func=_run)
