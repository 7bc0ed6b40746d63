"""Generate the gRPC stubs from proto/ with grpcio-tools, with package-relative imports.

proto/ is the one source of truth; one protoc run is written to two homes, which differ only in
their import lines:

- ``gateway/_proto`` for the server (the ``switchboard-gateway`` distribution);
- ``clients/python/switchboard_client/_proto`` for the client library (the
  ``switchboard-client`` distribution, which must not depend on the server package).

Both register the same descriptors (``switchboard/v1/*.proto``) in protobuf's default pool, which
accepts an identical file twice, so a process may import both; tests/test_client_package.py
checks the two copies stay identical.
"""

from __future__ import annotations

import pathlib
import re
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The client's copy says itself that it is not type-checked (grpc_tools' *_pb2_grpc.py are
# untyped): the package is checked under --strict here and in its users' editable installs, and
# the comment travels with it where no config of ours does. gateway._proto has its override in
# pyproject.toml.
_CLIENT_HEADER = "# mypy: ignore-errors\n"
# Output directory -> (the import package its stubs live in, a first line for every file).
OUTPUTS = {
    ROOT / "gateway" / "_proto": ("gateway._proto", ""),
    ROOT / "clients" / "python" / "switchboard_client" / "_proto":
        ("switchboard_client._proto", _CLIENT_HEADER),
}


def generate(into: pathlib.Path) -> int:
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    return int(protoc.main(
        ["grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={into}",
         f"--pyi_out={into}", f"--grpc_python_out={into}", *protos]
    ))


def write(generated: pathlib.Path, out: pathlib.Path, package: str, header: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for src in [*generated.rglob("*.py"), *generated.rglob("*.pyi")]:  # never a __pycache__ .pyc
        dest = out / src.relative_to(generated)
        dest.parent.mkdir(parents=True, exist_ok=True)
        text = re.sub(r"^from switchboard\.v1 import", f"from {package}.switchboard.v1 import",
                      src.read_text(), flags=re.M)
        dest.write_text(header + text)
    for d in [out, *[p for p in out.rglob("*") if p.is_dir() and p.name != "__pycache__"]]:
        (d / "__init__.py").touch()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generated = pathlib.Path(tmp)
        rc = generate(generated)
        if rc:
            return rc
        for out, (package, header) in OUTPUTS.items():
            write(generated, out, package, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
