#!/usr/bin/env bash
# Real parallel text for the seeded comparisons: Multi30k en-de (Elliott et al. 2016), the
# tokenised, lower-cased release, first 12,000 training pairs, validation set, test 2016 flickr;
# words seen once in training become <unk>. Builds DEST/data-bin for benchmarks/specs/multi30k.toml.
#   git clone https://github.com/multi30k/dataset multi30k   # or any checkout of it
#   benchmarks/multi30k.sh multi30k bench/multi30k-data
set -euo pipefail
SRC=${1:?usage: benchmarks/multi30k.sh MULTI30K_CHECKOUT DEST}
DEST=${2:?usage: benchmarks/multi30k.sh MULTI30K_CHECKOUT DEST}
TOK="$SRC/data/task1/tok"
[ -d "$TOK" ] || { echo "multi30k.sh: $TOK not found (a checkout of github.com/multi30k/dataset?)" >&2; exit 2; }
if [ -e "$DEST/data-bin" ]; then echo "multi30k.sh: $DEST/data-bin exists; not overwritten" >&2; exit 2; fi
mkdir -p "$DEST/text"
for l in en de; do
  head -n 12000 "$TOK/train.lc.norm.tok.$l" > "$DEST/text/train.$l"
  cp "$TOK/val.lc.norm.tok.$l" "$DEST/text/valid.$l"
  cp "$TOK/test_2016_flickr.lc.norm.tok.$l" "$DEST/text/test.$l"
done
fairseq-preprocess --source-lang en --target-lang de --trainpref "$DEST/text/train" \
  --validpref "$DEST/text/valid" --testpref "$DEST/text/test" --destdir "$DEST/data-bin" \
  --thresholdsrc 2 --thresholdtgt 2 --workers 1
