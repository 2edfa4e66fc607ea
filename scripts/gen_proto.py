"""Generate the Python stubs in rasst/v1 from proto/rasst/v1 (``make proto``).

The stubs live in the ``rasst.v1`` package, the proto package's own name, so protoc's
``from rasst.v1 import x_pb2`` imports stand as written; the client and the server both
import them from there. ``tests/test_proto.py`` runs this into a temporary folder and
fails when the committed stubs drift.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
PROTOS = ["rasst/v1/retrieval.proto", "rasst/v1/admin.proto"]


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into ``out_dir``; return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    tmp = out_dir / "_protoc"
    tmp.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={tmp}",
        f"--pyi_out={tmp}",
        f"--grpc_python_out={tmp}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    written = []
    for src in sorted((tmp / "rasst" / "v1").glob("*.py*")):
        dst = out_dir / src.name
        dst.write_text(src.read_text())
        written.append(dst)
    (out_dir / "__init__.py").write_text(
        '"""Generated from proto/rasst/v1 by `make proto`; do not edit."""\n'
    )
    written.append(out_dir / "__init__.py")
    for p in sorted(tmp.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    tmp.rmdir()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "rasst" / "v1")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for p in generate(args.out):
        print(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
