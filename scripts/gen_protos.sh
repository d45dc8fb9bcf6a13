#!/usr/bin/env bash
# Regenerate the Python protobuf/gRPC code for protos/dflare/agent/v1/agent.proto.
#
# Usage: scripts/gen_protos.sh [OUT_DIR]    (default: device_agent/_gen)
#
# grpc_tools.protoc writes modules named after the proto path (dflare/agent/v1/agent_pb2.py)
# whose gRPC stub imports `from dflare.agent.v1 import agent_pb2`. We flatten them into OUT_DIR
# and rewrite that import to be package-relative, so the code imports as device_agent._gen.agent_pb2
# without putting a top-level `dflare` package on sys.path. The descriptor keeps its proto path
# (dflare/agent/v1/agent.proto), which is what reflection and other languages see.
#
# The output depends on the grpcio-tools version: pyproject.toml pins it in the dev extra, and
# tests/unit/test_protos_drift.py fails when the committed code differs from a fresh run.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT_DIR="${1:-$ROOT/device_agent/_gen}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

cd "$ROOT/protos"
"$PYTHON" -m grpc_tools.protoc -I . \
  --python_out="$TMP" --pyi_out="$TMP" --grpc_python_out="$TMP" \
  dflare/agent/v1/agent.proto

mkdir -p "$OUT_DIR"
for name in agent_pb2.py agent_pb2.pyi agent_pb2_grpc.py; do
  sed -e 's/^from dflare\.agent\.v1 import agent_pb2 as /from . import agent_pb2 as /' \
    "$TMP/dflare/agent/v1/$name" > "$OUT_DIR/$name"
done
if [[ ! -f "$OUT_DIR/__init__.py" ]]; then
  printf '"""Generated protobuf/gRPC code (scripts/gen_protos.sh); do not edit."""\n' > "$OUT_DIR/__init__.py"
fi
echo "generated $(cd "$OUT_DIR" && pwd)/{agent_pb2.py,agent_pb2.pyi,agent_pb2_grpc.py}"
