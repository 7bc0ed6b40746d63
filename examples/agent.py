"""An example agent: a plain gRPC client of the Switchboard gateway (the generated stubs of the
switchboard-client package, clients/python; nothing of the server is imported).

It does the core scenario of the demo:
  1. through the code channel, finds today's longest meeting and emails the team about it —
     the event list never leaves the sandbox; only "Done" comes back;
  2. through the dedicated tool, transfers money between two accounts;
  3. shows one denied action with the policy's reasons;
  4. a transfer above the policy's approval threshold: held (nothing happens), approved by a
     second principal (dev-approver) through the Approvals API, completed exactly once by
     retrying with the same request_id.

Usage: python examples/agent.py --target 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid

import grpc
from google.protobuf import json_format
from switchboard_client._proto.switchboard.v1 import approvals_pb2 as apb
from switchboard_client._proto.switchboard.v1 import approvals_pb2_grpc as apb_grpc
from switchboard_client._proto.switchboard.v1 import gateway_pb2 as pb
from switchboard_client._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc

LONGEST_MEETING = '''
from datetime import date, datetime
from sdk import workspace

events = workspace.list_events(date=date.today().isoformat())

def minutes(e):
    start = datetime.fromisoformat(e["start"])
    end = datetime.fromisoformat(e["end"])
    return (end - start).total_seconds() / 60

longest = max(events, key=minutes)
team = workspace.list_contacts(team="demo")
workspace.send_email(
    to=[c["email"] for c in team],
    subject=f"Today's longest meeting: {longest['title']}",
    body=f"{longest['title']} runs {minutes(longest):.0f} minutes "
         f"({longest['start'][11:16]}-{longest['end'][11:16]} UTC, {longest['location']}).",
)
"Done"
'''


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def show(title: str, response: pb.ExecuteResponse) -> None:
    result = json_format.MessageToDict(response.result) if response.HasField("result") else None
    print(f"\n== {title}")
    print(f"   route:    {response.decision.route}  (decision {response.decision.decision_id})")
    print(f"   result:   {json.dumps(result)}")
    if response.stdout:
        print(f"   stdout:   {response.stdout.strip()}")
    if response.error.code:
        print(f"   error:    {response.error.code}: {response.error.message}")
    print(f"   trace id: {response.trace_id}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:50051")
    args = parser.parse_args()
    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.GatewayStub(channel)

        code = stub.Execute(pb.ExecuteRequest(
            request_id=str(uuid.uuid4()),
            code_run=pb.CodeRun(source=LONGEST_MEETING, timeout_ms=10_000)),
            metadata=metadata("dev-agent"), timeout=60)
        show("code channel: email the team about today's longest meeting", code)

        args_ = {"from_account": "A1", "to_account": "A2", "amount": 25.0, "currency": "USD",
                 "memo": "demo transfer"}
        transfer = pb.ExecuteRequest(request_id=str(uuid.uuid4()),
                                     tool_call=pb.ToolCall(name="ledger.create_transfer"))
        transfer.tool_call.arguments.update(args_)
        tool = stub.Execute(transfer, metadata=metadata("dev-finance"), timeout=30)
        show("dedicated tool: ledger.create_transfer as finance-1", tool)

        denied_req = pb.ExecuteRequest(request_id=str(uuid.uuid4()),
                                       tool_call=pb.ToolCall(name="ledger.create_transfer"))
        denied_req.tool_call.arguments.update(args_)
        try:
            stub.Execute(denied_req, metadata=metadata("dev-agent"), timeout=30)
        except grpc.RpcError as err:
            trailers = dict(err.trailing_metadata() or ())
            detail = json.loads(trailers.get("switchboard-error", "{}"))
            print("\n== denied: ledger.create_transfer as agent-1 (no finance role)")
            print(f"   status:   {err.code().name}  code: {detail.get('code')}")
            for reason in detail.get("details", {}).get("reasons", []):
                print(f"   reason:   {reason}")
            print(f"   trace id: {trailers.get('switchboard-trace-id', '')}")
        else:
            print("\nERROR: the transfer by agent-1 was not denied", file=sys.stderr)
            return 1
        if not approved_transfer(stub, apb_grpc.ApprovalsServiceStub(channel)):
            return 1
    ok = code.HasField("result") and code.result.string_value == "Done" and not tool.error.code
    return 0 if ok else 1


def approved_transfer(stub: pb_grpc.GatewayStub, approvals: apb_grpc.ApprovalsServiceStub) -> bool:
    """A large transfer: held for approval, approved by someone else, run once on retry."""
    listing = pb.ExecuteRequest(request_id=str(uuid.uuid4()),
                                tool_call=pb.ToolCall(name="ledger.list_accounts"))
    accounts = json_format.MessageToDict(
        stub.Execute(listing, metadata=metadata("dev-finance"), timeout=30).result)
    # From the richer of A1/A2 to the other, so repeated demo runs never run out of money.
    pair = sorted((a for a in accounts if a["id"] in ("A1", "A2")), key=lambda a: a["balance"])
    big = {"from_account": pair[-1]["id"], "to_account": pair[0]["id"], "amount": 1200.0,
           "currency": "USD", "memo": "demo transfer above the approval threshold"}
    request = pb.ExecuteRequest(request_id=str(uuid.uuid4()),
                                tool_call=pb.ToolCall(name="ledger.create_transfer"))
    request.tool_call.arguments.update(big)
    try:
        stub.Execute(request, metadata=metadata("dev-finance"), timeout=30)
    except grpc.RpcError as err:
        trailers = dict(err.trailing_metadata() or ())
        detail = json.loads(trailers.get("switchboard-error", "{}"))
        status = err.code().name
        if detail.get("code") != "approval_required":
            print(f"\nERROR: expected approval_required, got {detail}", file=sys.stderr)
            return False
    else:
        print("\nERROR: the large transfer was not held for approval", file=sys.stderr)
        return False
    held = detail["details"]
    print("\n== held for approval: ledger.create_transfer of 1200.00 USD as finance-1")
    print(f"   status:   {status}  code: {detail['code']}  (nothing was executed)")
    print(f"   approval: {held['approval_id']} by role {', '.join(held['approver_roles'])} "
          f"until {held['expires_at']}")
    pending = approvals.ListApprovals(apb.ListApprovalsRequest(),
                                      metadata=metadata("dev-approver"), timeout=30)
    shown = next(a for a in pending.approvals if a.approval_id == held["approval_id"])
    print(f"   approver-1 sees: {json.dumps(json_format.MessageToDict(shown.action))}")
    approvals.Approve(apb.ApproveRequest(approval_id=shown.approval_id,
                                         comment="checked with finance"),
                      metadata=metadata("dev-approver"), timeout=30)
    print(f"   approved by approver-1 "
          f"(CLI: switchboard approvals approve {shown.approval_id} --token dev-approver)")
    first = stub.Execute(request, metadata=metadata("dev-finance"), timeout=30)
    again = stub.Execute(request, metadata=metadata("dev-finance"), timeout=30)
    show("retried with the same request_id after approval", first)
    once = (first.result.struct_value["id"] == again.result.struct_value["id"]
            and again.replayed and not first.replayed)
    print(f"   second retry replayed the same transfer (exactly once): {once}")
    return once


if __name__ == "__main__":
    sys.exit(main())
