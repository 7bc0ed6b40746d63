"""Generate gateway/_proto from proto/ with grpcio-tools, with package-relative imports."""

from __future__ import annotations

import pathlib
import re
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "gateway" / "_proto"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    rc = protoc.main(
        ["grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={OUT}",
         f"--pyi_out={OUT}", f"--grpc_python_out={OUT}", *protos]
    )
    if rc:
        return int(rc)
    for path in [*OUT.rglob("*.py"), *OUT.rglob("*.pyi")]:  # never __pycache__'s .pyc
        text = path.read_text()
        fixed = re.sub(r"^from switchboard\.v1 import", "from gateway._proto.switchboard.v1 import",
                       text, flags=re.M)
        path.write_text(fixed)
    for d in [OUT, *[p for p in OUT.rglob("*") if p.is_dir() and p.name != "__pycache__"]]:
        (d / "__init__.py").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
