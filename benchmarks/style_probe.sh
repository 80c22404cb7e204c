#!/usr/bin/env bash
# benchmarks/style_probe.sh STYLE ROW...: rows of protocol v2 (seed 0, from runs/table_v2/stage_s0) on another target
# style (benchmarks/RESULTS.md, "Session 4"). Each style gets its own data root data_probe/STYLE whose source folders
# are links to data/ (the source is the same); rows: adabn (also prints the source-only mIoU), source_cont, dacs,
# fda, adv, adv0, oracle, <row>_bn. Runs go to runs/probe/STYLE/ROW; finished rows are skipped.
set -u
cd "$(dirname "$0")/.."
st=$1; shift
D=data_probe/$st
mkdir -p $D/synthetic $D/tfds/synthetic
[ -e $D/synthetic/gta5 ] || ln -s $(pwd)/data/synthetic/gta5 $D/synthetic/gta5
[ -e $D/tfds/synthetic/gta5 ] || ln -s $(pwd)/data/tfds/synthetic/gta5 $D/tfds/synthetic/gta5
OUT=runs/probe/$st
mkdir -p $OUT
common="--config.data.root=$D --config.data.synthetic.target_style=$st --config.seed=0"
warm="--config.model.init_from=runs/table_v2/stage_s0 --config.model.init_steps=0"
n1="$warm --config.train.num_steps=200 --config.train.checkpoint_every_steps=200 --config.eval.every_steps=200"
for row in "$@"; do
  wd=$OUT/$row
  [ -f $wd/eval.json ] && { echo "skip $wd"; continue; }
  case $row in
    adabn) a="--config=configs/adabn.py $warm";;
    source_cont) a="--config=configs/source_only.py $n1";;
    dacs) a="--config=configs/dacs.py $n1";;
    fda) a="--config=configs/fda.py:b001 $n1";;
    adv) a="--config=configs/adv.py $n1";;
    adv0) a="--config=configs/adv.py $n1 --config.adv.lambda_adv=0";;
    oracle) a="--config=configs/oracle.py --config.train.num_steps=1200 --config.train.checkpoint_every_steps=1200 --config.eval.every_steps=1200";;
    *_bn) a="--config=configs/adabn.py --config.model.init_from=$OUT/${row%_bn} --config.model.init_steps=0";;
  esac
  mkdir -p $wd
  t0=$(date +%s)
  python main.py $a $common --workdir=$wd > $wd/run.log 2>&1
  echo "$(date -u +%T) $st $row rc=$? $(( $(date +%s)-t0 ))s"
done
