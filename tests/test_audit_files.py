"""``audit show`` / ``audit verify`` over several audit files (one per replica): each file is
its own hash chain and is reported on its own; a trace is found in whichever file holds it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from audit_support import simulate_denial, simulate_tool_call

from gateway.audit import AuditSettings, cli_audit_show, cli_audit_verify, setup_telemetry
from gateway.audit.cli import audit_files
from gateway.cli import main

pytestmark = pytest.mark.timeout(60)


def _replica_files(tmp_path: Path) -> tuple[list[Path], list[str]]:
    """Three replicas' files, each written by its own telemetry: (files, one trace id each)."""
    files, traces = [], []
    for i in range(3):
        file = tmp_path / "audit" / f"replica-{i}.jsonl"
        tel = setup_telemetry(AuditSettings(file=file, fsync="never"))
        try:
            traces.append(simulate_tool_call(tel.tracer, request_id=f"req-{i}"))
            simulate_denial(tel.tracer, request_id=f"deny-{i}")
        finally:
            tel.shutdown()
        files.append(file)
    return files, traces


def _run(fn, *args, **kwargs) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    buf = io.StringIO()
    code = fn(*args, out=buf, **kwargs)
    return code, buf.getvalue()


def test_verify_reports_each_file_as_its_own_chain(tmp_path: Path) -> None:
    files, _ = _replica_files(tmp_path)
    code, text = _run(cli_audit_verify, files)
    assert code == 0, text
    lines = text.splitlines()
    assert [ln.split(":")[0] for ln in lines[:3]] == ["OK"] * 3
    assert all(f"OK: {f}: " in text for f in files)
    assert lines[-1] == "3 of 3 audit files intact"

    # a record deleted from the middle file: that file is BROKEN, the others still OK
    lines_of = files[1].read_text().splitlines(keepends=True)
    del lines_of[2]
    files[1].write_text("".join(lines_of))
    code, text = _run(cli_audit_verify, files)
    assert code == 1
    assert f"OK: {files[0]}: " in text and f"OK: {files[2]}: " in text
    assert f"BROKEN: {files[1]} line 3: record(s) seq 3 deleted" in text
    assert text.splitlines()[-1] == "2 of 3 audit files intact, 1 broken or missing"

    # a missing file among them is reported too, and fails the run
    code, text = _run(cli_audit_verify, [files[0], tmp_path / "gone.jsonl"])
    assert code == 1 and "gone.jsonl does not exist" in text
    assert "1 of 2 audit files intact, 1 broken or missing" in text


def test_directories_and_globs_name_the_files(tmp_path: Path) -> None:
    files, _ = _replica_files(tmp_path)
    (tmp_path / "audit" / "notes.txt").write_text("not an audit file")
    assert audit_files(tmp_path / "audit") == files
    assert audit_files(str(tmp_path / "audit" / "replica-*.jsonl")) == files
    assert audit_files([files[1], tmp_path / "audit"]) == [files[1], files[0], files[2]]
    assert audit_files(tmp_path / "missing.jsonl") == [tmp_path / "missing.jsonl"]
    assert audit_files(str(tmp_path / "nothing-*.jsonl")) == []
    code, text = _run(cli_audit_verify, str(tmp_path / "nothing-*.jsonl"))
    assert code == 1 and "no audit files in" in text


def test_show_finds_a_trace_in_any_file(tmp_path: Path) -> None:
    files, traces = _replica_files(tmp_path)
    for i, trace_id in enumerate(traces):
        code, text = _run(cli_audit_show, trace_id, files)
        assert code == 0, text
        assert text.startswith(f"trace {trace_id}") and f"req-{i}" in text
        assert all(f"req-{j}" not in text for j in range(3) if j != i)
        code, text = _run(cli_audit_show, trace_id, tmp_path / "audit")  # a directory
        assert code == 0 and f"req-{i}" in text
    code, text = _run(cli_audit_show, "f" * 32, files)
    assert code == 1 and "no audit records for trace" in text and "in 3 audit files" in text
    code, text = _run(cli_audit_show, traces[0], [files[0], tmp_path / "gone.jsonl"])
    assert code == 1 and "gone.jsonl does not exist" in text


def test_the_switchboard_command_takes_several_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files, traces = _replica_files(tmp_path)
    assert main(["audit", "verify", *map(str, files)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "3 of 3 audit files intact"
    assert main(["audit", "verify", "--file", str(files[0]), "--file", str(files[2])]) == 0
    out = capsys.readouterr().out
    assert str(files[1]) not in out and "2 of 2 audit files intact" in out
    assert main(["audit", "verify", str(files[0])]) == 0  # one file: no summary line
    assert "audit files intact" not in capsys.readouterr().out
    assert main(["audit", "show", traces[2], str(tmp_path / "audit")]) == 0
    assert "req-2" in capsys.readouterr().out
    assert main(["audit", "show", traces[1], "--file", str(files[1])]) == 0
    assert "req-1" in capsys.readouterr().out
    assert main(["audit", "show", traces[1], str(files[0])]) == 1
    assert "no audit records" in capsys.readouterr().err
