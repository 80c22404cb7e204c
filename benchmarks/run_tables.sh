#!/usr/bin/env bash
# Runs the rows of the results table (benchmarks/RESULTS.md, "Adaptation on the embedded benchmark") one after the
# other, each in runs/table/<row>_s<seed>, and logs the wall time of each. A row whose eval.json exists is skipped,
# so the script can be stopped and started again. Summarise with `python benchmarks/summarize_tables.py`.
#
#   bash benchmarks/run_tables.sh "0 1 2" source_only adv_single ...     # seeds, then rows (default: every row)
#
# Every row uses its config's demo defaults (BiSeNet from scratch, 128x256, batch 4 per domain, 200 steps) and only
# changes what the row name says. The fda_mbt and fda_mbt_st rows need the three fda_b0xx rows of the same seed.
set -u
cd "$(dirname "$0")/.."
SEEDS=${1:-"0 1 2"}
shift || true
ROWS=${*:-"source_only source_only_light source_only_strong oracle adv_single adv_multi adv_feature adv_lambda0 adv_lambda001 fda_b001 fda_b005 fda_b009 fda_mbt fda_mbt_st dacs"}
OUT=runs/table
mkdir -p "$OUT"

row_args() {  # row seed -> the main.py arguments of that row
  local row=$1 s=$2
  case $row in
    source_only) echo "--config=configs/source_only.py" ;;
    source_only_light) echo "--config=configs/source_only.py --config.train.augment=light" ;;
    source_only_strong) echo "--config=configs/source_only.py --config.train.augment=strong" ;;
    oracle) echo "--config=configs/oracle.py" ;;
    adv_single) echo "--config=configs/adv.py" ;;
    adv_lambda0) echo "--config=configs/adv.py --config.adv.lambda_adv=0" ;;  # ablation: target batches, no adversarial term
    adv_lambda001) echo "--config=configs/adv.py --config.adv.lambda_adv=0.01" ;;  # 10x the reference lambda
    adv_multi) echo "--config=configs/adv.py:multilevel" ;;
    adv_feature) echo "--config=configs/adv.py:feature" ;;
    fda_b001|fda_b005|fda_b009) echo "--config=configs/fda.py:${row#fda_}" ;;
    fda_mbt) echo "--config=configs/fda.py:mbt --mode=pseudolabel --config.mbt.name=fda_mbt_s$s" \
                  "--config.mbt.workdirs=$OUT/fda_b001_s$s,$OUT/fda_b005_s$s,$OUT/fda_b009_s$s" ;;
    fda_mbt_st) echo "--config=configs/fda.py:b001,selftrain --config.selftrain.pseudo_dir=data/pseudo/fda_mbt_s$s" ;;
    dacs) echo "--config=configs/dacs.py" ;;
    *) echo "unknown row $row" >&2; return 1 ;;
  esac
}

for s in $SEEDS; do
  for row in $ROWS; do
    wd=$OUT/${row}_s$s
    if [ -f "$wd/eval.json" ]; then echo "skip $wd (eval.json exists)"; continue; fi
    args=$(row_args "$row" "$s") || exit 1
    mkdir -p "$wd"
    echo "$(date -u +%FT%TZ) start $wd: python main.py $args --config.seed=$s --workdir=$wd"
    t0=$(date +%s)
    # shellcheck disable=SC2086
    python main.py $args --config.seed="$s" --workdir="$wd" > "$wd/run.log" 2>&1
    rc=$?
    wall=$(( $(date +%s) - t0 ))
    echo "{\"row\": \"$row\", \"seed\": $s, \"rc\": $rc, \"wall_s\": $wall}" > "$wd/wall.json"
    echo "$(date -u +%FT%TZ) done $wd rc=$rc wall=${wall}s"
    [ $rc -eq 0 ] || echo "FAILED: see $wd/run.log"
  done
done
