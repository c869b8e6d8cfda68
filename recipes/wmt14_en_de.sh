#!/usr/bin/env bash
# WMT14 English-German with fairseq-efficiency, on an 8-GPU machine.
#
#   recipes/wmt14_en_de.sh prepare          # tokenise + BPE (fairseq's own script), binarize
#   recipes/wmt14_en_de.sh train RUN [extra fairseq-train flags]
#   recipes/wmt14_en_de.sh eval RUN
#   recipes/wmt14_en_de.sh flags RUN [extra flags]   # print the fairseq-train arguments
#
#   recipes/wmt14_en_de.sh variants                  # list the variants
#
# RUN names a variant defined in variant() below (LSTM: baseline, autoassist, self-paced,
# dynamic-sampling, meprop, mesimp, prune80 (after baseline), hybrid; Transformer:
# transformer, transformer-big, transformer-autoassist, transformer-big-autoassist,
# transformer-meprop); extra flags are appended, so any fairseq option can be changed from
# the command line. recipes/README.md: GPUs, multi-node launch, comparing runs.
# Environment: FAIRSEQ_SRC (a fairseq source checkout, for examples/translation/
# prepare-wmt14en2de.sh, which downloads the data and needs mosesdecoder + subword-nmt),
# WORK (default: ./wmt14), NGPU (default: 8).
set -euo pipefail

WORK=${WORK:-$PWD/wmt14}
NGPU=${NGPU:-8}
DATA=$WORK/data-bin/wmt14_en_de
USER_DIR=${USER_DIR:-$(fairseq-efficiency-userdir)}

# The paper-scale LSTM (4+4 layers, 1024 hidden, 512 embeddings; See et al. / Ono et al.).
LSTM=(--arch lstm --encoder-layers 4 --decoder-layers 4 --encoder-embed-dim 512
      --decoder-embed-dim 512 --decoder-out-embed-dim 512 --encoder-hidden-size 1024
      --decoder-hidden-size 1024 --dropout 0.2)
COMMON=(--task translation_efficiency --criterion sentence_cross_entropy --label-smoothing 0.1
        --optimizer adam --adam-betas "(0.9,0.98)" --lr 0.001 --lr-scheduler inverse_sqrt
        --warmup-updates 4000 --clip-norm 1.0 --max-tokens 8192 --max-update 100000
        --save-interval-updates 5000 --keep-interval-updates 5 --fp16)

MEPROP_LSTM=("${LSTM[@]/#lstm/lstm_meprop}")   # same sizes, meProp LSTM layers
# Transformers with fairseq's WMT14 en-de settings (examples/scaling_nmt, examples/translation):
# base 4096 tokens/GPU at lr 1e-3, big 3584 tokens/GPU at lr 5e-4 (8 GPUs; for 128-GPU batches
# add --update-freq 16 --lr 0.001); both share all embeddings (joined dictionary, see prepare).
T_OPT=(--clip-norm 0.0 --warmup-init-lr 1e-07 --weight-decay 0.0 --share-all-embeddings)
TRANSFORMER=(--arch transformer_wmt_en_de --dropout 0.1 --lr 0.001 --max-tokens 4096 "${T_OPT[@]}")
TRANSFORMER_BIG=(--arch transformer_vaswani_wmt_en_de_big --dropout 0.3 --lr 0.0005
                 --max-tokens 3584 "${T_OPT[@]}")
MEPROP_TRANSFORMER=("${TRANSFORMER[@]/#transformer_wmt_en_de/transformer_meprop}")
VARIANTS="baseline autoassist self-paced dynamic-sampling meprop mesimp prune80 hybrid transformer
transformer-autoassist transformer-big transformer-big-autoassist transformer-meprop"
BASELINE_CKPT=$WORK/checkpoints/baseline/checkpoint_best.pt
RESTART=(--reset-optimizer --reset-dataloader --reset-meters --reset-lr-scheduler)

variant() {
  case "$1" in
    baseline) echo "${LSTM[@]}" ;;
    # AutoAssist (features built by "prepare", or on first use)
    autoassist) echo "${LSTM[@]} --instance-selection autoassist" ;;
    self-paced|dynamic-sampling) echo "${LSTM[@]} --instance-selection $1" ;;
    # meProp: top-k 6.25% of the gate gradients, alternating encoder/decoder per epoch
    meprop) echo "${MEPROP_LSTM[@]} --meprop-k 0.0625 --meprop-alternate" ;;
    # meSimp: meProp + removal of hidden units rarely in the top-k (p = 0.08, Sun et al.)
    mesimp) echo "${MEPROP_LSTM[@]} --meprop-k 0.0625 --mesimp-interval 2000 --mesimp-prune-rate 0.08" ;;
    # See et al.: prune the trained baseline 80% class-blind, retrain with half the LR
    prune80) echo "${LSTM[@]} --restore-file $BASELINE_CKPT ${RESTART[*]} --prune-ratio 0.8" \
                  "--prune-scheme class-blind --prune-at-update 0 --prune-lr-scale 0.5" ;;
    # HybridNMT: 4 pipeline stages (one LSTM layer per side each) x 2 data-parallel groups
    hybrid) echo "--arch hybrid_lstm_wmt_en_de --criterion hybrid_cross_entropy" \
                 "--pipeline-encoder-balance [1,1,1,1] --pipeline-decoder-balance [1,1,1,1]" \
                 "--pipeline-chunks 4 --ddp-backend legacy_ddp" ;;
    transformer) echo "${TRANSFORMER[@]}" ;;
    transformer-big) echo "${TRANSFORMER_BIG[@]}" ;;
    transformer-autoassist) echo "${TRANSFORMER[@]} --instance-selection autoassist" ;;
    transformer-big-autoassist) echo "${TRANSFORMER_BIG[@]} --instance-selection autoassist" ;;
    # meProp in every FFN layer (top-k 6.25% of the output gradient)
    transformer-meprop) echo "${MEPROP_TRANSFORMER[@]} --meprop-k 0.0625" ;;
    *) echo "unknown variant $1 (see recipes/wmt14_en_de.sh)" >&2; exit 2 ;;
  esac
}

case "${1:-}" in
  prepare)
    : "${FAIRSEQ_SRC:?set FAIRSEQ_SRC to a fairseq source checkout}"
    mkdir -p "$WORK" && cd "$WORK"
    bash "$FAIRSEQ_SRC/examples/translation/prepare-wmt14en2de.sh"
    fairseq-preprocess --source-lang en --target-lang de --joined-dictionary \
      --trainpref wmt14_en_de/train --validpref wmt14_en_de/valid --testpref wmt14_en_de/test \
      --destdir "$DATA" --workers 16
    fairseq-efficiency-featurize "$DATA"   # AutoAssist's TF-IDF features, cached next to the data
    ;;
  flags|train)  # flags: dry run, the fairseq-train arguments of RUN, one per line
    cmd=$1; run=${2:?usage: $0 $1 RUN [flags]}; shift 2
    v=$(variant "$run")   # an unknown RUN exits here (set -e)
    # shellcheck disable=SC2206
    args=("$DATA" --user-dir "$USER_DIR" "${COMMON[@]}" $v
          --distributed-world-size "$NGPU" --save-dir "$WORK/checkpoints/$run")
    if [ "$cmd" = flags ]; then
      printf '%s\n' "${args[@]}" "$@"
    else
      fairseq-train "${args[@]}" --log-format json --log-file "$WORK/$run.log" "$@"
    fi
    ;;
  variants) printf '%s\n' $VARIANTS ;;
  eval)
    run=${2:?usage: $0 eval RUN}
    fairseq-generate "$DATA" --user-dir "$USER_DIR" --path "$WORK/checkpoints/$run/checkpoint_best.pt" \
      --beam 5 --lenpen 0.6 --batch-size 128 --required-batch-size-multiple 1 --remove-bpe \
      --scoring sacrebleu | tee "$WORK/$run.gen" | tail -1
    ;;
  *) sed -n 2,20p "$0"; exit 2 ;;
esac
