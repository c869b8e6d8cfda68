#!/usr/bin/env bash
# The CUDA path in one command, on a machine with one CUDA GPU (under 8 minutes):
#   1. meProp linear unit backward on the GPU (paper: 27.5x at h = 8192, k = 32)
#   2. lstm vs lstm_meprop training step on the GPU (hidden 1024)
#   3. `pytest -m gpu` (CUDA equals CPU, fp16/bf16 masks, AutoAssist, meSimp, device pipeline)
#   4. 50 fp16 updates of every technique through fairseq-train on the embedded corpus
# and one summary at the end (also in WORKDIR/run-*/summary.txt, beside the logs). Without a
# CUDA GPU it says so and exits 0; otherwise the exit status is 1 when any check failed.
#
#   benchmarks/gpu_check.sh [WORKDIR]      # default /tmp/fairseq-efficiency-gpu-check
#
# Python: $PYTHON, else .venv/bin/python (created with `make setup` when missing). The
# venv needs a CUDA build of torch (`python -c "import torch; print(torch.version.cuda)"`).
set -uo pipefail
set -f  # no globbing: flags such as [1,1] stay words
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${1:-/tmp/fairseq-efficiency-gpu-check}

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
else
    if [ ! -x .venv/bin/python ]; then
        echo "gpu_check: no .venv here: running make setup"
        make setup || exit 1
    fi
    PY=.venv/bin/python
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore

if ! GPU=$("$PY" -c '
import torch
if not torch.cuda.is_available():
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    print(f"none: torch {torch.__version__}, {build}, {torch.cuda.device_count()} devices")
else:
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
'); then
    echo "gpu_check: $PY cannot import torch" >&2
    exit 2
fi
if [[ $GPU == none:* ]]; then
    echo "gpu_check: no CUDA GPU (${GPU#none: }): nothing to check"
    exit 0
fi

mkdir -p "$WORK"
RUN=$(mktemp -d "$WORK/run-$(date +%Y%m%d-%H%M%S)-XXXX")  # fresh checkpoints: nothing resumes
LOGS=$RUN/logs
mkdir -p "$LOGS"
START=$SECONDS
DEADLINE=$((SECONDS + 470))  # every step is cut at the 7m50s mark
SUMMARY=()
FAILED=0
note() { SUMMARY+=("$1"); echo "[gpu_check] $1"; }
limit() {  # seconds for a step: its own cap, or what is left of the budget
    local left=$((DEADLINE - SECONDS))
    [ "$left" -lt 1 ] && left=1
    [ "$1" -lt "$left" ] && echo "$1" || echo "$left"
}

echo "[gpu_check] $GPU; logs in $LOGS"

# -- data, on the CPU while the GPU benchmarks run: a small embedded corpus for the
#    fairseq-train runs and the demo corpus of the lstm benchmark
"$PY" -m fairseq_efficiency.data.prepare "$WORK/corpus" --train-size 4000 --valid-size 200 \
    --test-size 200 >"$LOGS/prepare.out" 2>"$LOGS/prepare.log" &
PREP=$!
"$PY" -c 'import sys; from fairseq_efficiency.cli.demo import DEMO_CORPUS
from fairseq_efficiency.data.prepare import prepare; prepare(sys.argv[1], DEMO_CORPUS)' \
    "$WORK/meprop" >"$LOGS/prepare_demo.log" 2>&1 &
PREP_DEMO=$!

# -- 1. meProp linear unit (GPU to itself: nothing else runs on it yet)
timeout "$(limit 90)" "$PY" benchmarks/meprop.py linear --device cuda --sizes 4096 8192 \
    --ks 32 128 --reps 10 >"$LOGS/meprop_linear.log" 2>&1
rc=$?
row=$(grep -E '^\| 8192 \| 32 \|' "$LOGS/meprop_linear.log")
if [ $rc -eq 0 ] && [ -n "$row" ]; then
    IFS='|' read -r _ _ _ dense steady speed _ <<<"$row"
    note "meProp linear h=8192 k=32 batch 1024: dense backward${dense}ms, unified${steady}ms, speedup${speed}(paper: 27.5x)"
else
    note "meProp linear: FAILED (rc $rc, $LOGS/meprop_linear.log)"; FAILED=1
fi

# -- 2. lstm vs lstm_meprop training step
wait $PREP_DEMO
timeout "$(limit 120)" "$PY" benchmarks/meprop.py lstm --device cuda --hidden 1024 \
    --workdir "$WORK/meprop" >"$LOGS/meprop_lstm.log" 2>&1
rc=$?
ms=$(grep -E '^\| lstm(_meprop)? \|' "$LOGS/meprop_lstm.log" | awk -F'|' '{gsub(/ /,"",$2); gsub(/ /,"",$6); printf "%s %s ms, ", $2, $6}')
speed=$(grep -oE 'full-step speedup [0-9.]+x; backward speedup [0-9.]+x' "$LOGS/meprop_lstm.log")
if [ $rc -eq 0 ] && [ -n "$speed" ]; then
    note "lstm vs lstm_meprop step (hidden 1024, k 6.25%, fp32): ${ms}${speed}"
else
    note "lstm vs lstm_meprop: FAILED (rc $rc, $LOGS/meprop_lstm.log)"; FAILED=1
fi

# -- 3 + 4. the GPU-marked tests and the fairseq-train runs, side by side on the GPU
wait $PREP || { note "fairseq-efficiency-prepare: FAILED ($LOGS/prepare.log)"; FAILED=1; }
DATA=$(tail -n 1 "$LOGS/prepare.out")
timeout "$(limit 300)" "$PY" -m pytest -m gpu -q -p no:cacheprovider tests \
    >"$LOGS/pytest_gpu.log" 2>&1 &
PYTEST=$!

USER_DIR=$ROOT/fairseq_efficiency
COMMON=("$DATA" --user-dir "$USER_DIR" --task translation_efficiency --seed 1 --num-workers 0
        --optimizer adam --lr 0.002 --clip-norm 1.0 --max-tokens 4000 --max-update 50
        --no-epoch-checkpoints --log-format simple --log-interval 10 --no-progress-bar)
LSTM=(--arch lstm --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 128
      --decoder-embed-dim 128 --decoder-out-embed-dim 128 --encoder-hidden-size 256
      --decoder-hidden-size 256 --dropout 0.1)
MEPROP=("${LSTM[@]}" --arch lstm_meprop --meprop-k 0.0625 --criterion cross_entropy)
HYBRID=(--arch hybrid_lstm --layers 2 --hidden-size 256 --encoder-embed-dim 128
        --decoder-embed-dim 128 --dropout 0.1 --criterion hybrid_cross_entropy)
declare -A RUNS=(
    [lstm]="--fp16 ${LSTM[*]} --criterion cross_entropy"
    [autoassist]="--fp16 ${LSTM[*]} --criterion sentence_cross_entropy --instance-selection autoassist"
    [lstm_meprop]="--fp16 ${MEPROP[*]} --meprop-alternate"
    [mesimp]="--memory-efficient-fp16 ${MEPROP[*]} --mesimp-interval 10 --mesimp-prune-rate 0.08"
    [pruning]="--fp16 ${LSTM[*]} --criterion cross_entropy --prune-ratio 0.5 --prune-at-update 25"
    [hybrid_lstm]="--fp16 ${HYBRID[*]}"
    [hybrid_pipeline]="--fp16 ${HYBRID[*]} --pipeline-model-parallel --pipeline-chunks 2
        --pipeline-encoder-balance [1,1] --pipeline-decoder-balance [1,1]
        --pipeline-encoder-devices [0,0] --pipeline-decoder-devices [0,0] --pipeline-devices [0]"
)
ORDER=(lstm autoassist lstm_meprop mesimp pruning hybrid_lstm hybrid_pipeline)
declare -A PIDS
for name in "${ORDER[@]}"; do
    # shellcheck disable=SC2086  # the run's flags are plain words
    ( t0=$SECONDS
      timeout "$(limit 300)" "$PY" -m fairseq_cli.train "${COMMON[@]}" --save-dir "$RUN/ck_$name" \
          ${RUNS[$name]} >"$LOGS/train_$name.log" 2>&1
      echo "rc=$? wall=$((SECONDS - t0))" >>"$LOGS/train_$name.log" ) &
    PIDS[$name]=$!
done

wait $PYTEST
rc=$?
line=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|skipped)' "$LOGS/pytest_gpu.log" | tail -n 1)
line=${line//=/}
if [ $rc -eq 0 ]; then note "pytest -m gpu: ${line:-rc 0}"
else note "pytest -m gpu: FAILED (rc $rc) ${line} ($LOGS/pytest_gpu.log)"; FAILED=1; fi

note "fairseq-train, 50 updates each on the GPU (fp16; meSimp: --memory-efficient-fp16):"
for name in "${ORDER[@]}"; do
    wait "${PIDS[$name]}"
    res=$("$PY" - "$LOGS/train_$name.log" "$RUN/ck_$name/checkpoint_last.pt" "$name" <<'EOF'
import math, os, re, sys
log, ckpt, name = sys.argv[1:]
text = open(log, errors="replace").read()
rc, wall = re.findall(r"^rc=(\d+) wall=(\d+)$", text, re.M)[-1]
stats = re.findall(r"\| train \| epoch \d+ \| loss ([\d.naif]+) .*?num_updates (\d+)", text)
if rc != "0" or not stats:
    err = [l for l in text.splitlines() if "Error" in l or "error:" in l]
    print(f"FAILED rc {rc}: {err[-1][:150] if err else 'see ' + log}")
    sys.exit(1)
loss, upd = float(stats[-1][0]), int(stats[-1][1])
extra, ok = "", upd == 50 and math.isfinite(loss)
if name == "pruning" and os.path.isfile(ckpt):
    import torch
    import fairseq_efficiency  # noqa: F401  (checkpoint allow-list)
    from fairseq_efficiency.pruning.hook import hook_state_from_checkpoint
    from fairseq_efficiency.pruning.masks import MaskSet
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    masks = MaskSet.from_state_dict(hook_state_from_checkpoint(state)["masks"])
    alive = sum(int(state["model"][n][~m].count_nonzero()) for n, m in masks.masks.items())
    extra = f", sparsity {masks.sparsity():.3f}, pruned weights non-zero: {alive}"
    ok = ok and alive == 0
if name == "mesimp":
    sizes = re.findall(r"meSimp: layer sizes (.*)", text)
    extra = f", layer sizes {sizes[-1].strip() if sizes else '?'}"
if name == "autoassist":
    keep = re.findall(r"keep_rate ([\d.]+)", text)
    extra = f", keep_rate {keep[-1] if keep else '?'}"
print(f"{'ok' if ok else 'FAILED'}: {upd} updates, train loss {loss:.3f}, {wall} s{extra}")
sys.exit(0 if ok else 1)
EOF
)
    [ $? -eq 0 ] || FAILED=1
    note "  $(printf '%-16s' "$name") $res"
done

{
    echo "=== gpu_check summary: $GPU, $((SECONDS - START)) s ==="
    printf '%s\n' "${SUMMARY[@]}"
    if [ $FAILED -eq 0 ]; then echo "result: all checks passed"; else echo "result: FAILED (logs in $LOGS)"; fi
} | tee "$RUN/summary.txt"
exit $FAILED
