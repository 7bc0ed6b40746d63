"""Shared helpers for the policy tests and bench/policy_bench.py.

- ``OpaRestServer``: a real HTTP server on 127.0.0.1:0 speaking OPA's REST Data API
  (``POST /v1/data/{path}`` with ``{"input": ...}`` -> ``{"result": ...}`` or ``{}`` when
  undefined, ``?provenance=true`` adds the bundle revision). The OPA binary cannot be installed
  here (no wheel, npm or Debian package), so the server evaluates the same policy directory
  with regorus; a ``mode`` switch makes it slow, fail with 500, answer undefined or garbage.
- the Rego semantics table runner over every candidate engine that is importable.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from gateway.models import Operation, Principal
from gateway.policy import build_input
from gateway.policy.bundle import Bundle, clean_error, load_bundle

REPO = Path(__file__).resolve().parents[1]
POLICY_DIR = REPO / "policies"
CASES_FILE = Path(__file__).with_name("policy_semantics_cases.yaml")

AGENT = Principal(id="agent-1", tenant="demo", roles=("agent",))
FINANCE = Principal(id="finance-1", tenant="demo", roles=("agent", "finance"))

OPS = {
    "ledger.get_balance": Operation(
        name="ledger.get_balance",
        backend="ledger",
        operation_id="get_balance",
        method="GET",
        path="/accounts/{account}/balance",
    ),
    "ledger.list_accounts": Operation(
        name="ledger.list_accounts",
        backend="ledger",
        operation_id="list_accounts",
        path="/accounts",
    ),
    "ledger.create_transfer": Operation(
        name="ledger.create_transfer",
        backend="ledger",
        operation_id="create_transfer",
        tags=("compliance", "payments"),
        method="POST",
        path="/transfers",
    ),
    "workspace.send_email": Operation(
        name="workspace.send_email",
        backend="workspace",
        operation_id="send_email",
        method="POST",
        path="/emails",
    ),
}


def tool(principal: Principal, name: str, **arguments: Any) -> dict[str, Any]:
    return build_input(
        principal=principal,
        kind="tool",
        operation=OPS.get(name),
        operation_name=name,
        arguments=arguments,
    )


def host_call(principal: Principal, name: str, **arguments: Any) -> dict[str, Any]:
    return build_input(
        principal=principal,
        kind="host_call",
        operation=OPS.get(name),
        operation_name=name,
        arguments=arguments,
        parent_decision_id="d-parent",
    )


def code_run(principal: Principal) -> dict[str, Any]:
    return build_input(
        principal=principal,
        kind="code",
        operation=None,
        operation_name="",
        source_sha256="00" * 32,
    )


def copy_policies(dest: Path) -> Path:
    """A private, editable copy of the shipped policies (for reload tests)."""
    target = dest / "policies"
    shutil.copytree(POLICY_DIR, target)
    return target


# ---------------------------------------------------------------------------------------------
# A real OPA-REST-shaped server.


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):  # Rego sets travel as arrays, as OPA sends them
        return sorted(value, key=json.dumps)
    raise TypeError(f"not JSON: {type(value).__name__}")


class OpaRestServer:
    """OPA's REST Data API on loopback, backed by regorus over a policy directory."""

    def __init__(self, policy_dir: Path = POLICY_DIR) -> None:
        self.bundle: Bundle = load_bundle(policy_dir)
        self.mode = "ok"  # ok | slow | error500 | undefined | garbage | not_object
        self.serve_bundle = True  # False: like `opa run DIR` (provenance has no bundle revision)
        self.delay_s = 2.0
        self.requests = 0
        self.slow_answers = 0  # slow answers the server finished (after its delay)
        self._local = threading.local()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def setup(self) -> None:
                super().setup()
                # Like OPA (Go sets TCP_NODELAY): otherwise headers and body in two writes meet
                # delayed ACKs and every answer takes ~40 ms.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.startswith("/health"):
                    self._send(200, b"{}")
                elif urlsplit(self.path).path.rstrip("/") == "/v1/policies":
                    modules = [{"id": i, "raw": raw} for i, raw in outer.bundle.modules]
                    self._send(200, json.dumps({"result": modules}).encode())
                else:
                    self._send(404, b'{"code":"resource_not_found"}')

            def do_POST(self) -> None:
                outer.requests += 1
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                url = urlsplit(self.path)
                if not url.path.startswith("/v1/data/"):
                    self._send(404, b'{"code":"resource_not_found"}')
                    return
                rule = "data." + url.path[len("/v1/data/") :].strip("/").replace("/", ".")
                self._send(*outer.answer(rule, body.get("input"), parse_qs(url.query)))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A client that gave up (timeout tests) makes the late write fail: not an error here.
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, rule: str, input: Any, query: dict[str, list[str]]) -> tuple[int, bytes]:
        if self.mode == "slow":
            time.sleep(self.delay_s)
            self.slow_answers += 1
        if self.mode == "error500":
            return 500, b'{"code":"internal_error","message":"boom"}'
        if self.mode == "garbage":
            return 200, b"<html>not json"
        if self.mode == "not_object":
            return 200, b'{"result": "allow"}'
        # regorus engines are thread-affine (also for dropping): one per handler thread,
        # replaced by that same thread when the served bundle changes.
        bundle = self.bundle
        cached = getattr(self._local, "engine", None)
        if cached is None or cached[0] is not bundle:
            self._local.engine = cached = (bundle, bundle.build_engine())
        engine = cached[1]
        out: dict[str, Any] = {}
        try:
            engine.set_input(input if input is not None else {})
            result = engine.eval_rule(rule)
        except Exception as exc:
            return 500, json.dumps({"code": "internal_error", "message": clean_error(exc)}).encode()
        if result is not None and self.mode != "undefined":
            out["result"] = result
        if any(v.lower() == "true" for v in query.get("provenance", [])):
            out["provenance"] = {"version": "regorus-backed-test-server"}
            if self.serve_bundle:
                out["provenance"]["bundles"] = {"switchboard": {"revision": self.bundle.revision}}
        return 200, json.dumps(out, default=_json_default).encode()

    def load(self, policy_dir: Path) -> None:
        """Serve another policy directory (as OPA does after a bundle or file change)."""
        self.bundle = load_bundle(policy_dir)

    def start(self) -> OpaRestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------------------------------
# Semantics table: one runner per candidate engine, each returning an outcome tuple.

Outcome = tuple[str, Any]  # ("value", v) | ("undefined", None) | ("error", message)


def load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = yaml.safe_load(CASES_FILE.read_text())
    return cases


def module_text(case: dict[str, Any]) -> str:
    return "package t\n\nimport rego.v1\n\n" + case["rego"]


def rule_path(case: dict[str, Any]) -> str:
    return f"data.t.{case.get('rule', 'x')}"


def expected(case: dict[str, Any]) -> Outcome:
    if case.get("error"):
        return ("error", None)
    if case.get("undefined"):
        return ("undefined", None)
    return ("value", case["expect"])


def _plain(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=json.dumps)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _norm(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def agrees(case: dict[str, Any], got: Outcome) -> bool:
    want = expected(case)
    if want[0] != got[0]:
        return False
    if want[0] != "value":
        return True
    a, b = _norm(want[1]), _norm(got[1])
    if case.get("set") and isinstance(a, list) and isinstance(b, list):
        key = json.dumps
        return sorted(a, key=key) == sorted(b, key=key)
    return bool(a == b)


def run_regorus(case: dict[str, Any]) -> Outcome:
    import regorus

    try:
        engine = regorus.Engine()
        engine.add_policy("t.rego", module_text(case))
        if "data" in case:
            engine.add_data(case["data"])
        if "input" in case:
            engine.set_input(case["input"])
        out = engine.eval_query(rule_path(case))
    except Exception as exc:
        return ("error", clean_error(exc))
    results = out.get("result", [])
    if not results:  # eval_query is the one API that tells undefined apart from null
        return ("undefined", None)
    return ("value", _plain(results[0]["expressions"][0]["value"]))


def run_regopy(case: dict[str, Any]) -> Outcome:
    import regopy

    try:
        rego = regopy.Interpreter()
        rego.add_module("t.rego", module_text(case))
        if "data" in case:
            rego.add_data(case["data"])
        if "input" in case:
            rego.set_input(case["input"])
        out = rego.query(rule_path(case))
    except Exception as exc:
        return ("error", str(exc)[:200])
    text = str(out)
    if not out.ok():
        return ("error", text[:200])
    if text.strip() == "undefined":
        return ("undefined", None)
    doc = json.loads(text)
    if "expressions" not in doc:
        return ("error", text[:200])
    return ("value", doc["expressions"][0])


def run_opa_eval(case: dict[str, Any]) -> Outcome:
    import opa_eval

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.rego"
        path.write_text(module_text(case))
        try:
            data = json.dumps(case["data"]) if "data" in case else None
            ev = opa_eval.OpaEval(str(path), data, rule_path(case))
            raw = ev.evaluate(json.dumps(case.get("input", {})))
        except Exception as exc:
            return ("error", str(exc)[:200])
    value = json.loads(raw)
    if value == "<undefined>":
        return ("undefined", None)
    return ("value", value)


def available_engines() -> dict[str, Callable[[dict[str, Any]], Outcome]]:
    """Every candidate importable here; regopy/opa-eval are measurement-only extras."""
    engines: dict[str, Callable[[dict[str, Any]], Outcome]] = {"regorus": run_regorus}
    for name, module, fn in (
        ("regopy", "regopy", run_regopy),
        ("opa-eval", "opa_eval", run_opa_eval),
    ):
        try:
            __import__(module)
        except ImportError:
            continue
        engines[name] = fn
    return engines
