"""`make demo`'s job, end to end: real processes, the three outcomes, everything stopped."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from gateway.audit import verify_chain


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_demo_prints_its_outcomes_and_stops_everything(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert re.search(r"code channel.*\n\s+route:\s+code .*\n\s+result:\s+\"Done\"", out)
    assert re.search(r"dedicated tool.*\n\s+route:\s+tool .*\n\s+result:\s+\{.*\"A2\"", out)
    assert re.search(r"denied.*\n\s+status:\s+PERMISSION_DENIED\s+code: policy_denied", out)
    assert "reason:" in out
    # A transfer above the approval threshold: held, approved by approver-1, run once.
    assert re.search(r"held for approval.*\n\s+status:\s+FAILED_PRECONDITION\s+code: "
                     r"approval_required", out)
    assert "approved by approver-1" in out
    assert "second retry replayed the same transfer (exactly once): True" in out
    trace_ids = re.findall(r"trace id: ([0-9a-f]{32})", out)
    assert len(trace_ids) == 4
    # The event list never left the sandbox: nothing but "Done" came back from the code run.
    assert "Architecture review" not in out.split("dedicated tool")[0]
    # Every printed trace is in the audit file, whose chain is intact.
    audit = tmp_path / "audit.jsonl"
    text = audit.read_text()
    assert all(t in text for t in trace_ids)
    assert verify_chain(audit).ok
    # Everything the demo started is stopped: none of its ports answers any more.
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", out.splitlines()[0])]
    assert len(ports) == 3
    assert not any(_listening(p) for p in ports)
