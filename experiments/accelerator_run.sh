#!/usr/bin/env bash
# The one call made on a leased GPU (issue 10): environment, a smoke run, the per-layer
# lowering table, then the accelerator benchmark with its budget set from the time left.
#
#   OUT=/some/folder bash experiments/accelerator_run.sh            # on the GPU, ~9 minutes
#   OUT=/tmp/acc_cpu TINY=1 JAX_PLATFORMS=cpu bash experiments/accelerator_run.sh
#
# Needs the reference checkout in .ref/dgp (see bench_accelerator.py's docstring). If the
# smoke run fails under the machine's own flax/optax/chex and .whl/ holds wheels of the
# versions this project was tested with, it installs those into /tmp/site and tries again.
# Writes into $OUT: env.txt, smoke.txt, lowering.txt, lowering.jsonl and acc/ (results.jsonl,
# log.txt, table.md). TOTAL_S (default 555) is when the benchmark must have finished.
set -u
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.
TOTAL_S=${TOTAL_S:-555}
if [ -n "${TINY:-}" ]; then
  model=(--resolution 32 --ch 4) lowering_batch=2 lowering_budget=5 tiny=(--tiny)
  rows=auto:1:float32,vmap:2:bfloat16
else
  model=(--resolution 128 --ch 96) lowering_batch=32 lowering_budget=60 tiny=()
  rows=auto:1:float32,auto:64:bfloat16,auto:64:float32,auto:largest:bfloat16
  rows+=,vmap:64:bfloat16,unrolled:64:bfloat16,auto:64:tf32,shifted:64:bfloat16
  rows+=,auto:largest:float32,auto:8:float32,auto:32:bfloat16
fi

{
  python3 -c "import sys, jax, flax, optax, chex; print(sys.version); \
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, \
'chex', chex.__version__, jax.devices())"
  python3 -c "import torch, torchvision; print('torch', torch.__version__, \
'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} >"$OUT/env.txt" 2>&1

smoke() {
  rm -rf /tmp/dgp_smoke
  timeout 120 python3 experiments/bench_accelerator.py --tiny --rows auto:2:float32 \
    --steps 2 --select 1 --out /tmp/dgp_smoke >>"$OUT/smoke.txt" 2>&1
  grep -q '"kind": "dgp".*"status": "ok"' /tmp/dgp_smoke/results.jsonl 2>/dev/null
}
if ! smoke; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "=== smoke failed: trying the carried wheels" >>"$OUT/smoke.txt"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl >>"$OUT/smoke.txt" 2>&1
    export PYTHONPATH=/tmp/site:.
  fi
  if ! smoke; then
    cat "$OUT/env.txt" "$OUT/smoke.txt" /tmp/dgp_smoke/log.txt 2>/dev/null | tail -80
    echo "smoke run failed: no measurement made"
    exit 3
  fi
fi
echo "smoke ok at ${SECONDS} s (PYTHONPATH=$PYTHONPATH)"

timeout $((lowering_budget + 60)) python3 experiments/bench_lowering.py "${model[@]}" \
  --batch "$lowering_batch" --precision float32,bfloat16 --out "$OUT/lowering.jsonl" \
  --budget-s "$lowering_budget" >"$OUT/lowering.txt" 2>&1
echo "per-layer table done at ${SECONDS} s"

budget=$((TOTAL_S - SECONDS - 15))
python3 experiments/bench_accelerator.py "${tiny[@]}" "${model[@]}" --reference .ref/dgp \
  --out "$OUT/acc" --budget-s "$budget" --config-timeout-s 170 --rows "$rows" >/dev/null 2>&1
echo "benchmark done at ${SECONDS} s"
cat "$OUT/lowering.txt"
cat "$OUT/acc/table.md"
