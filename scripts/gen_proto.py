#!/usr/bin/env python3
"""Generate the Python gRPC code in edgebox/proto_gen/ from proto/*.proto with betterproto2.

    python scripts/gen_proto.py          # regenerate
    python scripts/gen_proto.py --check  # exit 1 if the committed code is stale (CI runs this)

The options are the ones betterproto2 needs to emit grpclib servers and async clients for every RPC kind.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "edgebox" / "proto_gen"
OPTIONS = "client_generation=async,server_generation=async"


def generate(into: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("*.proto"))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the plugin lives in the venv
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_betterproto2_out={into}",
         f"--python_betterproto2_opt={OPTIONS}", *protos],
        check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)


def differences(a: Path, b: Path) -> list[str]:
    names_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    names_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    diffs = sorted(str(n) for n in names_a ^ names_b)
    diffs += sorted(str(n) for n in names_a & names_b if not filecmp.cmp(a / n, b / n, shallow=False))
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if edgebox/proto_gen is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "proto_gen"
        fresh.mkdir()
        generate(fresh)
        if args.check:
            stale = differences(fresh, OUT_DIR) if OUT_DIR.exists() else ["edgebox/proto_gen missing"]
            if stale:
                print("generated code is stale; run: python scripts/gen_proto.py\n  " + "\n  ".join(stale))
                return 1
            print("edgebox/proto_gen is up to date")
            return 0
        shutil.rmtree(OUT_DIR, ignore_errors=True)
        shutil.copytree(fresh, OUT_DIR)
        print(f"generated {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
