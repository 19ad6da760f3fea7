"""Generates the Python stubs of the imagesearch.v1 protos next to the protos.

Run by `make proto`; tests call `generate()` into a temporary folder and compare,
so stale stubs fail the suite.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import google.rpc.status_pb2
import grpc_tools
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted((PROTO_ROOT / "imagesearch" / "v1").glob("*.proto"))
# google/rpc/status.proto ships inside googleapis-common-protos, which pins its version.
GOOGLEAPIS_ROOT = Path(google.rpc.status_pb2.__file__).resolve().parents[2]
WELL_KNOWN_ROOT = Path(grpc_tools.__file__).resolve().parent / "_proto"


def generate(out_dir: Path) -> list[Path]:
    """Writes *_pb2.py, *_pb2.pyi, *_pb2_grpc.py and *_pb2_grpc.pyi under out_dir."""
    plugin = shutil.which("protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent))
    if plugin is None:
        raise RuntimeError("protoc-gen-mypy_grpc not found: run `make install` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{WELL_KNOWN_ROOT}",
        f"-I{GOOGLEAPIS_ROOT}",
        f"--plugin=protoc-gen-mypy_grpc={plugin}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed; see the messages above")
    return sorted(p for p in out_dir.rglob("*_pb2*.py*") if p.is_file())


if __name__ == "__main__":
    for path in generate(PROTO_ROOT):
        print(path.relative_to(PROTO_ROOT))
