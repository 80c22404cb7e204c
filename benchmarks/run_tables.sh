#!/usr/bin/env bash
# Protocol v2 of the results table (benchmarks/RESULTS.md, "Protocol v2"): per seed, one source-only stage of N0
# steps; every row then starts from that checkpoint (--config.model.init_from) and trains N1 steps with its
# reference hyper-parameters; AdaBN is the control; the oracle trains N0 + N1 steps on the target.
# Each run goes to runs/table_v2/<row>_s<seed> with its wall time in wall.json; a run whose eval.json exists is
# skipped, so the script can be stopped and started again. Summarise with `python benchmarks/summarize_tables.py`.
#
#   bash benchmarks/run_tables.sh "0 1 2" stage adabn adv_single ...     # seeds, then rows (default: every row)
#   N0=1000 N1=200 OUT=runs/table_v2 bash benchmarks/run_tables.sh         # the defaults
#   EXTRA="--config.data.source=synthia" OUT=runs/table_synthia bash benchmarks/run_tables.sh 0 stage adabn dacs
#                                      # EXTRA is added to every run (not for the oracle, whose source is the target)
#
# Rows needing other rows of the same seed: fda_mbt* need fda_b001/b005/b009; fda_*_st need their fda_mbt*.
# <row>_bn (e.g. adv_single_bn) is AdaBN applied to that row's final model: its BatchNorm statistics re-estimated on
# the target, which separates what a method did to the weights from what target batches did to the statistics.
set -u
cd "$(dirname "$0")/.."
SEEDS=${1:-"0 1 2"}
shift || true
ROWS=${*:-"stage adabn source_cont adv_single fda_b001 dacs oracle adv_lambda0 aug_light aug_strong adv_multi
adv_feature fda_b005 fda_b009 fda_mbt fda_mbt_st fda_mbt_cbst fda_mbt_cbst_st fda_mbt_agree fda_mbt_agree_st
dacs_rcs source_cont_rcs adv_l0002 adv_l005 dacs_t090"}
N0=${N0:-1000}
N1=${N1:-200}
OUT=${OUT:-runs/table_v2}
EXTRA=${EXTRA:-}
mkdir -p "$OUT"

row_args() {  # row seed -> the main.py arguments of that row
  local row=$1 s=$2
  local warm="--config.model.init_from=$OUT/stage_s$s --config.model.init_steps=0"
  local n1="$warm --config.train.num_steps=$N1 --config.train.checkpoint_every_steps=$N1 --config.eval.every_steps=$N1"
  local members="$OUT/fda_b001_s$s,$OUT/fda_b005_s$s,$OUT/fda_b009_s$s"
  case $row in
    stage) echo "--config=configs/source_only.py --config.train.num_steps=$N0 --config.train.checkpoint_every_steps=$N0" \
                "--config.eval.every_steps=$N0" ;;
    oracle) local n=$((N0 + N1))
            echo "--config=configs/oracle.py --config.train.num_steps=$n --config.train.checkpoint_every_steps=$n" \
                 "--config.eval.every_steps=$n" ;;
    adabn) echo "--config=configs/adabn.py $warm" ;;  # one epoch of target batches, no gradient
    source_cont) echo "--config=configs/source_only.py $n1" ;;
    source_cont_rcs) echo "--config=configs/source_only.py $n1 --config.data.rcs.enabled=True" ;;
    aug_light) echo "--config=configs/source_only.py $n1 --config.train.augment=light" ;;
    aug_strong) echo "--config=configs/source_only.py $n1 --config.train.augment=strong" ;;
    adv_single) echo "--config=configs/adv.py $n1" ;;
    adv_lambda0) echo "--config=configs/adv.py $n1 --config.adv.lambda_adv=0" ;;  # target batches, no adversarial term
    adv_l0002) echo "--config=configs/adv.py $n1 --config.adv.lambda_adv=0.0002" ;;  # sweep of the main weight
    adv_l005) echo "--config=configs/adv.py $n1 --config.adv.lambda_adv=0.005" ;;
    adv_multi) echo "--config=configs/adv.py:multilevel $n1" ;;
    adv_feature) echo "--config=configs/adv.py:feature $n1" ;;
    fda_b001|fda_b005|fda_b009) echo "--config=configs/fda.py:${row#fda_} $n1" ;;  # the beta sweep
    fda_mbt) echo "--config=configs/fda.py:mbt --mode=pseudolabel --config.mbt.name=mbt_fda_s$s --config.mbt.workdirs=$members" ;;
    fda_mbt_cbst) echo "--config=configs/fda.py:mbt --mode=pseudolabel --config.mbt.name=mbt_cbst_s$s" \
                       "--config.mbt.workdirs=$members --config.mbt.rule=cbst --config.mbt.cbst_portion=0.2" ;;
    fda_mbt_agree) echo "--config=configs/fda.py:mbt --mode=pseudolabel --config.mbt.name=mbt_agree_s$s" \
                        "--config.mbt.workdirs=$members --config.mbt.rule=agreement" ;;
    fda_mbt_st) echo "--config=configs/fda.py:b001,selftrain $n1 --config.selftrain.pseudo_dir=data/pseudo/mbt_fda_s$s" ;;
    fda_mbt_cbst_st) echo "--config=configs/fda.py:b001,selftrain $n1 --config.selftrain.pseudo_dir=data/pseudo/mbt_cbst_s$s" ;;
    fda_mbt_agree_st) echo "--config=configs/fda.py:b001,selftrain $n1 --config.selftrain.pseudo_dir=data/pseudo/mbt_agree_s$s" ;;
    dacs) echo "--config=configs/dacs.py $n1" ;;
    dacs_rcs) echo "--config=configs/dacs.py $n1 --config.data.rcs.enabled=True" ;;
    dacs_t090) echo "--config=configs/dacs.py $n1 --config.dacs.confidence_threshold=0.9" ;;  # threshold sweep
    *_bn) echo "--config=configs/adabn.py --config.model.init_from=$OUT/${row%_bn}_s$s --config.model.init_steps=0" ;;
    *) echo "unknown row $row" >&2; return 1 ;;
  esac
}

for s in $SEEDS; do
  for row in $ROWS; do
    wd=$OUT/${row}_s$s
    if [ -f "$wd/eval.json" ]; then echo "skip $wd (eval.json exists)"; continue; fi
    args=$(row_args "$row" "$s") || exit 1
    mkdir -p "$wd"
    echo "$(date -u +%FT%TZ) start $wd: python main.py $args $EXTRA --config.seed=$s --workdir=$wd"
    t0=$(date +%s)
    # shellcheck disable=SC2086
    [ "$row" = oracle ] && extra="" || extra=$EXTRA
    python main.py $args $extra --config.seed="$s" --workdir="$wd" > "$wd/run.log" 2>&1
    rc=$?
    wall=$(( $(date +%s) - t0 ))
    echo "{\"row\": \"$row\", \"seed\": $s, \"rc\": $rc, \"wall_s\": $wall}" > "$wd/wall.json"
    echo "$(date -u +%FT%TZ) done $wd rc=$rc wall=${wall}s"
    [ $rc -eq 0 ] || echo "FAILED: see $wd/run.log"
  done
done
