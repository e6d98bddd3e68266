#!/usr/bin/env bash
# Create isolated virtual environments for the peer tools of the teacher-throughput benchmark.
#
#   bash bench/peers/setup_peers.sh VENV_ROOT
#     -> VENV_ROOT/curator     bespokelabs-curator
#     -> VENV_ROOT/distilabel  distilabel[openai]
#
# Idempotent: a venv whose stamp file holds the same pinned spec is left alone (delete the stamp, or
# the venv, to rebuild). Uses the system python3 (3.11), never the project's .venv, and installs
# from the package index only: no model weights, no data sets. Takes several minutes on 2 cores.
set -euo pipefail

# Pinned peer releases (current on PyPI when this benchmark was written).
CURATOR_SPEC=("bespokelabs-curator==0.1.31")
# distilabel 1.5.3 imports `requests` (models/image_generation/openai.py, pulled in by
# `from distilabel.models.llms import OpenAILLM`) without declaring it, so it is pinned alongside.
DISTILABEL_SPEC=("distilabel[openai]==1.5.3" "requests==2.34.2")

VENV_ROOT="${1:?usage: setup_peers.sh VENV_ROOT}"
PYTHON="${PEER_PYTHON:-python3}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV_ROOT="$(realpath -m "$VENV_ROOT")"
case "$VENV_ROOT/" in
  "$REPO_ROOT/.venv/"*) echo "refusing to install peers into the project venv ($VENV_ROOT)" >&2; exit 2 ;;
esac
mkdir -p "$VENV_ROOT"

make_venv() {  # name spec...
  local name="$1"; shift
  local dir="$VENV_ROOT/$name" stamp="$VENV_ROOT/$name/.eakd_peer_stamp" want="$*"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$dir/bin/python" ]]; then
    echo "[$name] up to date ($want): $dir"
    return 0
  fi
  echo "[$name] building $dir ($want) with $("$PYTHON" --version 2>&1)"
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --progress-bar off "$@"
  "$dir/bin/python" -m pip freeze --disable-pip-version-check > "$dir/peer-freeze.txt"
  printf '%s' "$want" > "$stamp"
  echo "[$name] ready: $dir"
}

make_venv curator "${CURATOR_SPEC[@]}"
make_venv distilabel "${DISTILABEL_SPEC[@]}"
