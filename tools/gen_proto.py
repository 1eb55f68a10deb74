"""Generate the gRPC stubs in distrl/proto/v1 from protos/distrl/v1/*.proto.

`make proto` writes them; `make proto-check` (run by CI) fails when the
committed stubs differ from freshly generated ones.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "distrl" / "proto" / "v1"
HEADER = "# Generated from protos/distrl/v1 by `make proto`. Do not edit.\n"


def generate(dest: Path) -> None:
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "distrl" / "v1").glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        include = Path(protoc.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *sources,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        dest.mkdir(parents=True, exist_ok=True)
        for path in sorted((Path(tmp) / "distrl" / "v1").iterdir()):
            text = path.read_text()
            # protoc writes imports relative to the proto root; ours live under distrl.proto.
            text = re.sub(r"^from distrl\.v1 import", "from distrl.proto.v1 import", text, flags=re.M)
            (dest / path.name).write_text(HEADER + text)
        (dest / "__init__.py").write_text(HEADER)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args()
    if not args.check:
        if OUT.exists():
            shutil.rmtree(OUT)
        generate(OUT)
        print(f"wrote {OUT.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "v1"
        generate(fresh)
        cmp = filecmp.dircmp(fresh, OUT, ignore=["__pycache__"])
        stale = cmp.left_only + cmp.right_only + cmp.diff_files
        if stale:
            print(
                "gRPC stubs are out of date; run `make proto`: " + ", ".join(sorted(stale)), file=sys.stderr
            )
            return 1
    print("gRPC stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
