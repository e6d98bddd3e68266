#!/usr/bin/env bash
# Create an isolated virtual environment with TRL and peft, the peer of the training-speed comparison
# (bench/distill_trl.py runs bench/peers/trl_train.py with its python).
#
#   bash bench/peers/setup_trl.sh VENV_ROOT
#     -> VENV_ROOT/trl   trl + peft (CPU torch)
#
# Idempotent: a venv whose stamp file holds the same pinned spec is left alone (delete the stamp, or
# the venv, to rebuild). Uses the system python3 (3.11), never the project's .venv, and installs
# from the package index only: no model weights, no data sets. Takes a few minutes on 2 cores.
set -euo pipefail

# torch is installed first, alone, and then held by a constraints file: `torch==2.13.0` resolves to the
# CPU wheel on this machine's disk, while letting accelerate's unpinned `torch` resolve freely would
# download a multi-GB CUDA build. trl 1.16.0 (newest on PyPI when this was written) puts no bound on
# torch; its GKDTrainer lives in trl.experimental.gkd. transformers and peft are held at the project's own
# versions, so both sides of the comparison run the very same model code and LoRA layers.
TORCH_SPEC="torch==2.13.0"
TRL_SPEC="trl==1.16.0"
PEER_SPECS=("transformers==5.19.0" "peft==0.21.2")

VENV_ROOT="${1:?usage: setup_trl.sh VENV_ROOT}"
PYTHON="${PEER_PYTHON:-python3}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV_ROOT="$(realpath -m "$VENV_ROOT")"
case "$VENV_ROOT/" in
  "$REPO_ROOT/.venv/"*) echo "refusing to install peers into the project venv ($VENV_ROOT)" >&2; exit 2 ;;
esac
mkdir -p "$VENV_ROOT"

dir="$VENV_ROOT/trl" stamp="$VENV_ROOT/trl/.eakd_peer_stamp" want="$TORCH_SPEC $TRL_SPEC ${PEER_SPECS[*]}"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$dir/bin/python" ]]; then
  echo "[trl] up to date ($want): $dir"
  exit 0
fi
echo "[trl] building $dir ($want) with $("$PYTHON" --version 2>&1)"
rm -rf "$dir"
"$PYTHON" -m venv "$dir"
pip=("$dir/bin/python" -m pip install --quiet --disable-pip-version-check --progress-bar off)
"${pip[@]}" "$TORCH_SPEC"
printf '%s\n' "$TORCH_SPEC" > "$dir/torch-constraint.txt"
"${pip[@]}" -c "$dir/torch-constraint.txt" "$TRL_SPEC" "${PEER_SPECS[@]}"
"$dir/bin/python" -m pip freeze --disable-pip-version-check > "$dir/peer-freeze.txt"
printf '%s' "$want" > "$stamp"
echo "[trl] ready: $dir"
