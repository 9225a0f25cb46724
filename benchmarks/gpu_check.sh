#!/usr/bin/env bash
# The GPU path end to end in one short run (well under 8 minutes on a GPU machine):
#   1. a federation whose 8 virtual sites each get a quarter of a GPU (benchmarks/gpu_check.yaml),
#      checked to have trained on CUDA;
#   2. the models' training and inference throughput on CUDA and on the CPU, side by side.
# Figures go to $OUT (default: a new folder under /tmp), summary in $OUT/gpu_check.txt.
#
#   bash benchmarks/gpu_check.sh            # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: the same steps, tiny and on the CPU
#                                           # (tests/test_gpu_check.py keeps the script working)
# PYTHON names the interpreter with ecgfl installed (default: .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
OUT=${OUT:-$(mktemp -d /tmp/ecgfl-gpu-check.XXXXXX)}
mkdir -p "$OUT"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
SUMMARY="$OUT/gpu_check.txt"
config=benchmarks/gpu_check.yaml
device=cuda
models=(ribeiro_resnet xresnet1d50 inception1d)
if [[ "${1:-}" == "--dry-run" ]]; then
    # Same steps on the CPU: a tiny federation without GPU shares, one small model.
    config="$OUT/dry.yaml"
    printf '%s\n' "base: $PWD/benchmarks/gpu_check.yaml" \
        "experiment: {federation: {rounds: 1}, model: {kwargs: {width: 0.125}}}" \
        "data: {tis: {n_records: 120, n_hospitals: 2}, ptbxl_like: {n_records: 60, n_sites: 1}}" \
        "partition: {scheme: iid, tis_sites: 2, ptbxl_sites: 1, min_size: 10}" \
        "gpus_per_site: 0" > "$config"
    device=cpu
    models=(xresnet1d18)
elif ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu_check: torch sees no CUDA device here (use --dry-run on a CPU-only machine)" >&2
    exit 2
fi
{
    echo "# ecgfl GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), $(hostname)"
    "$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
} > "$SUMMARY"

started=$(date +%s)
"$BIN/ecgfl-simulate" run --config "$config" --out "$OUT/federation" --quiet > "$OUT/federation.txt"
echo "federation ($config): $(( $(date +%s) - started )) s; report $OUT/federation/report.md" >> "$SUMMARY"
# Where the sites trained: each train reply says which GPUs Ray gave its site (placement).
"$PY" - "$OUT/federation" "$device" >> "$SUMMARY" <<'PYEOF'
import json, sys
from pathlib import Path
from server.runs import entries as read_entries  # metrics.jsonl with its sites joined back
run, device = Path(sys.argv[1]), sys.argv[2]
entries = read_entries(run)
trains = [e for e in entries if e["phase"] == "train"]
gpus = [w["gpus"] for e in trains for w in e["placement"].values()]
print(f"rounds trained: {len(trains)}; sites per round: {[len(e['sites']) for e in trains]}")
print(f"site rounds given a GPU: {sum(bool(g) for g in gpus)} of {len(gpus)} ({sorted(set(gpus))})")
evaluated = [e for e in entries if e["phase"] == "evaluate"]
if evaluated:
    print("last evaluation:", json.dumps(evaluated[-1].get("aggregate")))
if (device == "cuda") != all(gpus):
    sys.exit(f"gpu_check: sites on {device} expected, Ray gave GPUs {gpus}")
PYEOF

for d in "$device" cpu; do
    "$PY" benchmarks/bench_models.py --device "$d" --models "${models[@]}" --width 0.5 \
        --steps 3 > "$OUT/models-$d.txt"
    { echo; echo "## models on $d"; cat "$OUT/models-$d.txt"; } >> "$SUMMARY"
    [[ "$d" == cpu && "$device" == cpu ]] && break
done
echo "total: $(( $(date +%s) - started )) s" >> "$SUMMARY"
cat "$SUMMARY"
