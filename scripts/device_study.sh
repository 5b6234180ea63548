#!/bin/bash
# One chunk of a study grid on a rented GPU machine (the `run` tool), from the pack that
# `python -m experiments.device_pack --tasks ... --out .carry` wrote here. As the run's command,
# with carry [".carry"] and a timeout_s above the chunk's minutes:
#   bash scripts/device_study.sh 8 experiments.effectiveness --tasks sst2 --sizes 1000 --name effectiveness_minilm16
# (8: the chunk's minutes). The study's JSONL, report and log come back in $OUT; merge them here with
#   python -m experiments.merge_logs experiments/results/<name>.jsonl <files_at>/<name>.jsonl
set -o pipefail
minutes=$1; shift
module=$1; shift
[ -d .carry/model ] && [ -d .carry/data ] || { echo "device_study: no .carry pack (run experiments.device_pack here and carry .carry)"; exit 2; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 JADAPT_ALLOCATOR=system
# a vocabulary-cut Q4_0 pack (multilingual-e5-small) travels as pack.npz: its fp32 weights first
if [ -f .carry/model/pack.npz ] && [ ! -f .carry/model/model.safetensors ]; then
  python3 -m experiments.device_pack --unpack .carry/model || exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
python3 -m "$module" --model .carry/model --data-dir .carry/data --out "$OUT" --compile-cache /tmp/jax_cache \
    --max-minutes "$minutes" "$@" 2>&1 | grep -v -i warning | tee "$OUT/device_study.log"
