#!/usr/bin/env bash
# The UCM comparison table of issue 6, in resumable stages: every stage is one `tfduch reproduce` call and
# re-running the script skips every finished cell (OUT/cells/*.json), so it can be stopped at any time.
#
#   bench/reproduce_ucm.sh                     # all stages (the full table: ~10 CPU-hours on 2 loaded cores)
#   STAGES="main64 ablation" bench/reproduce_ucm.sh
#   EPOCHS=30 OUT=runs/reproduce_ucm_e30 bench/reproduce_ucm.sh   # shorter training, said in the table
#
# Stages: main64 = every method at 64 bits, one seed; bits = every code length, one seed;
#         seeds = the full SEEDS seeds; ablation = CACH with each piece switched off, 64 bits (table: ablation.md);
#         chnr64 = reference CHNR beside CHNR on DUCH's objective (configs/chnr_duch.yaml), 64 bits, SEEDS seeds.
# The table compares each row with DUCH and with CCA+ITQ measured in the same run ("Checks" section).
set -euo pipefail

DATA=${TFDUCH_DATA:-$(dirname "$0")/../../shared/data/ucm_captions}
OUT=${OUT:-runs/reproduce_ucm}
SEEDS=${SEEDS:-3}
STAGES=${STAGES:-"main64 bits seeds ablation chnr64"}
METHODS=${METHODS:-duch,duch-paper,chnr,cach,djsrh,jdsh,cca-itq,ridge-itq,cosine}
ABLATION=${ABLATION:-duch,cach,cach-no-similarity,cach-no-contrastive,cach-no-autoencoder,cach-no-consistency,cach-pairwise-only,cca-itq}
EXTRA=()
if [[ -n "${EPOCHS:-}" ]]; then EXTRA+=(--epochs "$EPOCHS"); fi

run() { tfduch reproduce --dataset "$DATA" --out "$OUT" --quiet "${EXTRA[@]}" "$@"; }

for stage in $STAGES; do
  echo "=== stage $stage → $OUT" >&2
  case $stage in
    main64) run --methods "$METHODS" --bits 64 --seeds 1 --name main64 ;;
    bits) run --methods "$METHODS" --bits 16,32,64,128 --seeds 1 --name bits ;;
    seeds) run --methods "$METHODS" --bits 16,32,64,128 --seeds "$SEEDS" --name reproduce ;;
    ablation) run --methods "$ABLATION" --bits 64 --seeds 1 --name ablation ;;
    chnr64) run --methods duch,chnr,chnr-duch,cca-itq --bits 64 --seeds "$SEEDS" --name chnr64 ;;
    *) echo "unknown stage $stage (main64, bits, seeds, ablation, chnr64)" >&2; exit 2 ;;
  esac
done
echo "tables: $OUT/*.md" >&2
