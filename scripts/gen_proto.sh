#!/usr/bin/env bash
# Regenerates service/_proto from proto/ (the only way generated code is produced).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-.}
"$PY" -m grpc_tools.protoc \
  -Iservice/_proto=proto \
  --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
  service/_proto/marketo_destination/v1/destination.proto
