#!/usr/bin/env bash
# The infinity-emb peer's own virtual environment, apart from the project's (it needs
# transformers<5; the project needs 5.x).
#
#     bash bench/peers/infinity_env.sh            # -> .cache/vlgraph/peers/infinity-venv
#     bash bench/peers/infinity_env.sh FOLDER     # elsewhere
#
# Idempotent: an environment whose `infinity_emb` already imports is kept. Pins (see
# ../shared/notes/engines.md):
# - torch==2.13.0, the CPU wheel (a bare `torch` pulls gigabytes of CUDA wheels);
# - infinity-emb[server]==0.0.78, transformers<5 (with 5.x its CLIP path fails on
#   BaseModelOutputWithPooling), aiohttp (image inputs answer 500 without it);
# - no torchvision: one built for another torch breaks imports (torchvision::nms); the CLIP
#   image processor falls back to PIL without it.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${1:-${INFINITY_VENV:-$repo_root/.cache/vlgraph/peers/infinity-venv}}"
python="${PYTHON:-python3.11}"

if [[ -x "$venv/bin/infinity_emb" ]] && "$venv/bin/python" -c "import infinity_emb" 2>/dev/null; then
    echo "$venv"
    exit 0
fi

mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# torch first and alone: with it installed, nothing below resolves a CUDA build.
"$venv/bin/pip" install --quiet "torch==2.13.0"
"$venv/bin/pip" install --quiet \
    "torch==2.13.0" \
    "infinity-emb[server]==0.0.78" \
    "transformers<5" \
    "aiohttp" \
    "pillow"
# Some extra may bring torchvision in; it must not stay.
"$venv/bin/pip" uninstall --quiet --yes torchvision 2>/dev/null || true
"$venv/bin/python" -c "import infinity_emb, torch, transformers; print(infinity_emb.__version__, torch.__version__, transformers.__version__)" >&2
echo "$venv"
