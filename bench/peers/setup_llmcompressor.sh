#!/usr/bin/env bash
# Create an isolated virtual environment with llm-compressor, the peer of the int4 GPTQ comparison
# (bench/compress_llmcompressor.py runs bench/peers/llmcompressor_gptq.py with its python).
#
#   bash bench/peers/setup_llmcompressor.sh VENV_ROOT
#     -> VENV_ROOT/llmcompressor   llmcompressor (CPU torch)
#
# Idempotent: a venv whose stamp file holds the same pinned spec is left alone (delete the stamp, or
# the venv, to rebuild). Uses the system python3 (3.11), never the project's .venv, and installs
# from the package index only: no model weights, no data sets. Takes a few minutes on 2 cores.
set -euo pipefail

# torch is installed first, alone, and then held by a constraints file: `torch==2.13.0` resolves to the
# CPU wheel on this machine's disk, while letting llmcompressor's `torch>=2.10.0,<=2.14.0` resolve freely
# would download a multi-GB CUDA build. llmcompressor 0.14.0.1 (newest on PyPI when this was written)
# accepts torch 2.13.0; it pins compressed-tensors==0.19.0 and transformers<=5.17.0 itself.
TORCH_SPEC="torch==2.13.0"
LLMC_SPEC="llmcompressor==0.14.0.1"

VENV_ROOT="${1:?usage: setup_llmcompressor.sh VENV_ROOT}"
PYTHON="${PEER_PYTHON:-python3}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV_ROOT="$(realpath -m "$VENV_ROOT")"
case "$VENV_ROOT/" in
  "$REPO_ROOT/.venv/"*) echo "refusing to install peers into the project venv ($VENV_ROOT)" >&2; exit 2 ;;
esac
mkdir -p "$VENV_ROOT"

dir="$VENV_ROOT/llmcompressor" stamp="$VENV_ROOT/llmcompressor/.eakd_peer_stamp" want="$TORCH_SPEC $LLMC_SPEC"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$dir/bin/python" ]]; then
  echo "[llmcompressor] up to date ($want): $dir"
  exit 0
fi
echo "[llmcompressor] building $dir ($want) with $("$PYTHON" --version 2>&1)"
rm -rf "$dir"
"$PYTHON" -m venv "$dir"
pip=("$dir/bin/python" -m pip install --quiet --disable-pip-version-check --progress-bar off)
"${pip[@]}" "$TORCH_SPEC"
printf '%s\n' "$TORCH_SPEC" > "$dir/torch-constraint.txt"
"${pip[@]}" -c "$dir/torch-constraint.txt" "$LLMC_SPEC"
"$dir/bin/python" -m pip freeze --disable-pip-version-check > "$dir/peer-freeze.txt"
printf '%s' "$want" > "$stamp"
echo "[llmcompressor] ready: $dir"
