"""An example agent: a plain gRPC client of the Switchboard gateway.

It does the core scenario of the demo:
  1. through the code channel, finds today's longest meeting and emails the team about it —
     the event list never leaves the sandbox; only "Done" comes back;
  2. through the dedicated tool, transfers money between two accounts;
  3. shows one denied action with the policy's reasons.

Usage: python examples/agent.py --target 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid

import grpc
from google.protobuf import json_format

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc

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
    ok = code.HasField("result") and code.result.string_value == "Done" and not tool.error.code
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
