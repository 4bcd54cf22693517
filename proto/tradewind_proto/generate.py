"""Regenerate the committed gRPC stubs from the .proto files (`make protos`).

`python -m tradewind_proto.generate --check` regenerates into a temporary folder and fails on
any difference, so the committed stubs never drift from their contracts."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["generate", "main"]

PROTO_ROOT = Path(__file__).resolve().parent.parent  # the `proto/` source root
PACKAGE = Path("tradewind_proto") / "v1"


def generate(out_root: Path) -> list[Path]:
    """Run protoc over every .proto into out_root; returns the generated files."""
    from grpc_tools import protoc  # a dev dependency: stubs are committed

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_root / PACKAGE).glob("*_pb2*.py*"))


def main(argv: list[str] | None = None) -> int:
    """Write the stubs next to the .proto files, or with --check compare them."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs differ")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        differ = []
        for path in produced:
            target = PROTO_ROOT / path.relative_to(tmp)
            if args.check:
                if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                    differ.append(str(target))
            else:
                shutil.copyfile(path, target)
        if differ:
            print("stale generated stubs (run `make protos`):", *differ, sep="\n  ")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
