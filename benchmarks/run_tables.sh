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
#
# Translation (issue 14): `translator` trains CycleGAN with the semantic loss through the stage's network
# (configs/translate.py; `translator_nosem`: plain CycleGAN), then writes the translated source split to
# <its workdir>/translated_gta5 (--mode=translate; the row is done when its translate.json exists). `translated`,
# `translated_nosem` and `translated_fda` train source-only / FDA beta 0.01 on that folder. `tr_pl_<rule>` (rule fd,
# histogram, random) pseudo-labels SELECT_K (default 150) target-train images chosen by that rule (the reference set
# for fd and histogram: the translated source images; fd's features: the stage's network) with translated_fda as
# the one member; `tr_st_<rule>` self-trains on them (FDA beta 0.01 on the translated source + the pseudo-labels).
# STAGE (default OUT) is where stage_sS lives: a table on another target can start from the same source models,
#   STAGE=runs/table_v2 OUT=runs/table_night EXTRA="--config.data.root=data_night
#   --config.data.synthetic.target_style=night" bash benchmarks/run_tables.sh "0 1 2" adabn source_cont ...
# `fd_<set>` rows write fid.json: the Fréchet distance on the stage's features (FD_MAX images a side, default 200)
# from <set> to the target's val split: fd_source (the source's train split), fd_translated / fd_translated_nosem (the
# translators' output folders); fd_source_translated / fd_source_translated_nosem are source train vs that
# translator's translated source.
# ORACLE_EXTRA is added to the oracle only (EXTRA is not): on another target, the oracle needs its data flags, e.g.
#   ORACLE_EXTRA="--config.data.root=data_night --config.data.synthetic.target_style=night".
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
STAGE=${STAGE:-$OUT}
SELECT_K=${SELECT_K:-150}
FD_MAX=${FD_MAX:-200}
ORACLE_EXTRA=${ORACLE_EXTRA:-}
NT=${NT:-200}  # translator steps (the demo translator's)
DATA_ROOT=${DATA_ROOT:-data}  # data.root of the runs (set it when EXTRA sets --config.data.root): pseudo-labels go there
EXTRA=${EXTRA:-}
mkdir -p "$OUT"

translated() {  # translator row, seed -> the folder its --mode=translate wrote
  echo "$OUT/$1_s$2/translated_gta5"
}

done_file() {  # row workdir -> the file whose existence means the row is done
  case $1 in
    translator|translator_nosem) echo "$2/translated_gta5/translate.json" ;;
    fd_*) echo "$2/fid.json" ;;
    *) echo "$2/eval.json" ;;
  esac
}

row_args() {  # row seed -> the main.py arguments of that row
  local row=$1 s=$2
  local warm="--config.model.init_from=$STAGE/stage_s$s --config.model.init_steps=0"
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
    fda_mbt_st) echo "--config=configs/fda.py:b001,selftrain $n1 --config.selftrain.pseudo_dir=$DATA_ROOT/pseudo/mbt_fda_s$s" ;;
    fda_mbt_cbst_st) echo "--config=configs/fda.py:b001,selftrain $n1 --config.selftrain.pseudo_dir=$DATA_ROOT/pseudo/mbt_cbst_s$s" ;;
    fda_mbt_agree_st) echo "--config=configs/fda.py:b001,selftrain $n1 --config.selftrain.pseudo_dir=$DATA_ROOT/pseudo/mbt_agree_s$s" ;;
    dacs) echo "--config=configs/dacs.py $n1" ;;
    dacs_rcs) echo "--config=configs/dacs.py $n1 --config.data.rcs.enabled=True" ;;
    dacs_t090) echo "--config=configs/dacs.py $n1 --config.dacs.confidence_threshold=0.9" ;;  # threshold sweep
    translator) echo "--config=configs/translate.py --config.translate.init_from=$STAGE/stage_s$s --config.train.num_steps=$NT" ;;
    translator_nosem) echo "--config=configs/translate.py:nosem --config.train.num_steps=$NT" ;;
    translated) echo "--config=configs/source_only.py $n1 --config.data.gta5_dir=$(translated translator "$s")" ;;
    translated_nosem) echo "--config=configs/source_only.py $n1 --config.data.gta5_dir=$(translated translator_nosem "$s")" ;;
    translated_fda) echo "--config=configs/fda.py:b001 $n1 --config.data.gta5_dir=$(translated translator "$s")" ;;
    tr_pl_fd|tr_pl_histogram|tr_pl_random)
      local rule=${row#tr_pl_}
      echo "--config=configs/fda.py:mbt --mode=pseudolabel --config.mbt.name=tr_${rule}_s$s" \
           "--config.mbt.workdirs=$OUT/translated_fda_s$s --config.mbt.select=$rule --config.mbt.select_k=$SELECT_K" \
           "--config.mbt.select_reference=$(translated translator "$s")/images" \
           "--config.fid.feature_workdir=$STAGE/stage_s$s --config.data.gta5_dir=$(translated translator "$s")" ;;
    tr_st_fd|tr_st_histogram|tr_st_random)
      echo "--config=configs/fda.py:b001,selftrain $n1 --config.data.gta5_dir=$(translated translator "$s")" \
           "--config.selftrain.pseudo_dir=$DATA_ROOT/pseudo/tr_${row#tr_st_}_s$s" ;;
    fd_source|fd_translated|fd_translated_nosem|fd_source_translated|fd_source_translated_nosem)
      local a b=target:val
      case $row in
        fd_source) a=source:train ;;
        fd_translated) a=$(translated translator "$s")/images ;;
        fd_translated_nosem) a=$(translated translator_nosem "$s")/images ;;
        fd_source_translated) a=source:train; b=$(translated translator "$s")/images ;;
        fd_source_translated_nosem) a=source:train; b=$(translated translator_nosem "$s")/images ;;
      esac
      echo "--config=configs/source_only.py --mode=fid --config.fid.a=$a --config.fid.b=$b" \
           "--config.fid.feature_workdir=$STAGE/stage_s$s --config.fid.max_images=$FD_MAX" ;;
    *_bn) echo "--config=configs/adabn.py --config.model.init_from=$OUT/${row%_bn}_s$s --config.model.init_steps=0" ;;
    *) echo "unknown row $row" >&2; return 1 ;;
  esac
}

for s in $SEEDS; do
  for row in $ROWS; do
    wd=$OUT/${row}_s$s
    marker=$(done_file "$row" "$wd")
    if [ -f "$marker" ]; then echo "skip $wd ($(basename "$marker") exists)"; continue; fi
    args=$(row_args "$row" "$s") || exit 1
    mkdir -p "$wd"
    echo "$(date -u +%FT%TZ) start $wd: python main.py $args $EXTRA --config.seed=$s --workdir=$wd"
    t0=$(date +%s)
    # shellcheck disable=SC2086
    [ "$row" = oracle ] && extra=$ORACLE_EXTRA || extra=$EXTRA
    python main.py $args $extra --config.seed="$s" --workdir="$wd" > "$wd/run.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && [[ $row == translator* ]]; then  # then the translated source split, for the translated* rows
      python main.py $args $extra --mode=translate --config.translate.output_dir="$wd/translated_gta5" \
        --config.seed="$s" --workdir="$wd" >> "$wd/run.log" 2>&1
      rc=$?
    fi
    wall=$(( $(date +%s) - t0 ))
    echo "{\"row\": \"$row\", \"seed\": $s, \"rc\": $rc, \"wall_s\": $wall}" > "$wd/wall.json"
    echo "$(date -u +%FT%TZ) done $wd rc=$rc wall=${wall}s"
    [ $rc -eq 0 ] || echo "FAILED: see $wd/run.log"
  done
done
