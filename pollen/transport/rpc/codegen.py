"""Regenerate the checked-in gRPC stubs from ``pollen.proto`` (needs the ``dev`` extra).

Usage: ``python -m pollen.transport.rpc.codegen [OUT_DIR]`` — writes ``pollen_pb2.py``,
``pollen_pb2.pyi`` and ``pollen_pb2_grpc.py`` next to the proto (or into ``OUT_DIR``, which the
staleness test uses to compare against the checked-in files).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from pollen.errors import TransportError, require

HERE = Path(__file__).resolve().parent
PROTO = HERE / "pollen.proto"
GENERATED = ("pollen_pb2.py", "pollen_pb2.pyi", "pollen_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on ``pollen.proto``; return the generated files in ``out_dir``."""
    protoc = require("grpc_tools.protoc", "dev", "regenerating the gRPC stubs")
    root = HERE.parents[2]  # the folder that holds the ``pollen`` package
    rel = PROTO.relative_to(root)
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{root}", f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", str(rel)]
        if protoc.main(args) != 0:
            raise TransportError(f"protoc failed on {PROTO}")
        out_dir.mkdir(parents=True, exist_ok=True)
        made = []
        for name in GENERATED:
            src = Path(tmp) / rel.parent / name
            shutil.copy(src, out_dir / name)
            made.append(out_dir / name)
    return made


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(f"wrote {path}")
