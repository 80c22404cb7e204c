"""Summarises the runs of benchmarks/run_tables.sh: one Markdown row per method, mean and sample standard deviation
of the target mIoU over seeds, each seed's value, the gain over the control (AdaBN, protocol v2) as the mean and
standard deviation of the per-seed paired difference, the share of the source-only -> oracle gap won back, and the
mean wall time.

  python benchmarks/summarize_tables.py [runs/table_v2] [--per-class]
  python benchmarks/summarize_tables.py runs/table --control= --low=source_only     # protocol v1 (no control)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from rtda_jax import labels  # noqa: E402

ROW_ORDER = ('stage', 'source_cont', 'adabn', 'aug_light', 'aug_strong', 'source_cont_rcs', 'adv_single',
             'adv_lambda0', 'adv_l0002', 'adv_l005', 'adv_multi', 'adv_feature', 'fda_b001', 'fda_b005', 'fda_b009',
             'fda_mbt', 'fda_mbt_st', 'fda_mbt_cbst', 'fda_mbt_cbst_st', 'fda_mbt_agree', 'fda_mbt_agree_st', 'dacs',
             'dacs_rcs', 'dacs_t090', 'translated', 'translated_nosem', 'translated_fda', 'tr_pl_fd', 'tr_st_fd',
             'tr_pl_histogram', 'tr_st_histogram', 'tr_pl_random', 'tr_st_random', 'oracle',
             # protocol v1 (runs/table)
             'source_only', 'source_only_light', 'source_only_strong', 'adv_multi', 'adv_lambda001', 'fda_mbt_st')


def load(root: str) -> dict[str, dict[int, dict]]:
  """{row: {seed: {'eval': eval.json, 'wall_s': seconds or None}}} for every finished run under `root`."""
  runs: dict[str, dict[int, dict]] = collections.defaultdict(dict)
  for name in sorted(os.listdir(root)):
    match = re.fullmatch(r'(.+)_s(\d+)', name)
    path = os.path.join(root, name, 'eval.json')
    if not match or not os.path.exists(path):
      continue
    with open(path) as f:
      result = json.load(f)
    wall = None
    wall_path = os.path.join(root, name, 'wall.json')
    if os.path.exists(wall_path):
      with open(wall_path) as f:
        wall = json.load(f).get('wall_s')
    runs[match.group(1)][int(match.group(2))] = {'eval': result, 'wall_s': wall,
                                                 'images_per_sec': train_speed(os.path.join(root, name))}
  return runs


def load_fd(root: str) -> dict[str, dict[int, dict]]:
  """{row: {seed: fid.json}} for every `fd_*` row of benchmarks/run_tables.sh that finished under `root`."""
  rows: dict[str, dict[int, dict]] = collections.defaultdict(dict)
  for name in sorted(os.listdir(root)):
    match = re.fullmatch(r'(fd_.+)_s(\d+)', name)
    path = os.path.join(root, name, 'fid.json')
    if match and os.path.exists(path):
      with open(path) as f:
        rows[match.group(1)][int(match.group(2))] = json.load(f)
  return rows


def seed_general(texts: dict[int, str]) -> str:
  """One text for every seed's `texts[seed]`: each seed's own `_s<seed>` (a run folder of that seed, e.g.
  runs/table_v2/stage_s1) written `_sS`; where the seeds still disagree, every seed's text (`s0: ...; s1: ...`)."""
  general = {seed: re.sub(rf'_s{seed}(?![0-9])', '_sS', text) for seed, text in texts.items()}
  if len(set(general.values())) == 1:
    return next(iter(general.values()))
  return '; '.join(f's{seed}: {texts[seed]}' for seed in sorted(texts))


def print_fd(rows: dict[str, dict[int, dict]]) -> None:
  """One Markdown row per `fd_*` row: the two sets, the FD per seed and its mean ± std, the image counts and the
  feature network, each written once for all seeds with `_sS` for the seed's own folders (see seed_general)."""
  print()
  print('| FD row | a | b | seeds | FD (mean ± std) | per seed | images a side | features |')
  print('|---|---|---|---|---|---|---|---|')
  for row, seeds in sorted(rows.items()):
    m, s = mean_std([r['fd'] for r in seeds.values()])
    per_seed = ', '.join(f's{k}: {seeds[k]["fd"]:.2f}' for k in sorted(seeds))
    a, b, count, network = (seed_general({k: field(r) for k, r in seeds.items()}) for field in (
        lambda r: r['a']['spec'], lambda r: r['b']['spec'],
        lambda r: f'{r["a"]["num_images"]} / {r["b"]["num_images"]}', lambda r: r['network']))
    print(f'| {row} | {a} | {b} | {len(seeds)} | {m:.2f} ± {s:.2f} | {per_seed} | {count} | {network} |')


def train_speed(workdir: str, skip: int = 20) -> float | None:
  """Mean of the training loop's logged images/s (every domain's images counted) after the first `skip` steps."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    speeds = [r['images_per_sec'] for r in map(json.loads, f) if 'images_per_sec' in r and r['step'] > skip]
  return statistics.fmean(speeds) if speeds else None


def mean_std(values: list[float]) -> tuple[float, float]:
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float('nan'))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('root', nargs='?', default='runs/table_v2')
  parser.add_argument('--control', default='adabn', help="row the gains are paired against ('' = none)")
  parser.add_argument('--low', default='source_cont', help='row at 0%% of the gap')
  parser.add_argument('--high', default='oracle', help='row at 100%% of the gap')
  parser.add_argument('--per-class', action='store_true', help='also print the per-class IoU means')
  args = parser.parse_args()
  runs = load(args.root)
  fd_rows = load_fd(args.root)
  if not runs and fd_rows:
    print_fd(fd_rows)
    return
  if not runs:
    sys.exit(f'No finished runs (eval.json) under {args.root!r}; run benchmarks/run_tables.sh first.')
  miou = {row: [r['eval']['miou'] for _, r in sorted(seeds.items())] for row, seeds in runs.items()}
  low = statistics.fmean(miou[args.low]) if args.low in miou else None
  high = statistics.fmean(miou[args.high]) if args.high in miou else None
  rows = list(dict.fromkeys(r for r in ROW_ORDER if r in runs)) + sorted(set(runs) - set(ROW_ORDER))
  control = runs.get(args.control, {}) if args.control else {}

  # SYNTHIA-trained runs (eval.class_set synthia16): `miou` is over 16 classes; mIoU* over 13 gets a column too
  star = any('miou_13' in r['eval'] for seeds in runs.values() for r in seeds.values())
  print('| row | seeds | target mIoU (mean ± std) | per seed | gain over control (mean ± std) | gap won back | '
        + ('mIoU* 13 (mean ± std) | gain* over control | ' if star else '') + 'train images/s | wall (s, mean) |')
  print('|---|---|---|---|---|---|---|---|' + ('---|---|' if star else ''))
  for row in rows:
    paired = [runs[row][k]['eval']['miou'] - control[k]['eval']['miou'] for k in sorted(runs[row]) if k in control]
    if paired and row != args.control:
      dm, ds = mean_std(paired)
      gain = f'{dm:+.2f} ± {ds:.2f} ({len(paired)})'
    else:
      gain = '-'

    m, s = mean_std(miou[row])
    seeds = sorted(runs[row])
    per_seed = ', '.join(f's{k}: {runs[row][k]["eval"]["miou"]:.2f}' for k in seeds)
    gap = f'{100 * (m - low) / (high - low):+.0f}%' if low is not None and high is not None and high != low else '-'
    walls = [r['wall_s'] for r in runs[row].values() if r['wall_s'] is not None]
    wall = f'{statistics.fmean(walls):.0f}' if walls else '-'
    speeds = [r['images_per_sec'] for r in runs[row].values() if r['images_per_sec'] is not None]
    speed = f'{statistics.fmean(speeds):.1f}' if speeds else '-'
    starred = ''
    if star:
      m13 = [runs[row][k]['eval'].get('miou_13') for k in seeds]
      paired13 = [runs[row][k]['eval']['miou_13'] - control[k]['eval']['miou_13'] for k in seeds
                  if k in control and runs[row][k]['eval'].get('miou_13') is not None
                  and control[k]['eval'].get('miou_13') is not None]
      mean13 = '{:.2f} ± {:.2f}'.format(*mean_std(m13)) if None not in m13 else '-'
      gain13 = ('{:+.2f} ± {:.2f}'.format(*mean_std(paired13)) if paired13 and row != args.control else '-')
      starred = f'{mean13} | {gain13} | '
    print(f'| {row} | {len(seeds)} | {m:.2f} ± {s:.2f} | {per_seed} | {gain} | {gap} | {starred}{speed} | {wall} |')

  if fd_rows:
    print_fd(fd_rows)

  if args.per_class:
    names = [label.name for label in labels.TRAIN_LABELS]
    print()
    print('| row | ' + ' | '.join(names) + ' |')
    print('|---|' + '---|' * len(names))
    for row in rows:
      per_class = [r['eval']['per_class_iou'] for r in runs[row].values()]
      # None: no score (a class outside eval.class_set, e.g. terrain for SYNTHIA, or absent from the split): '-'
      scores = [[float(pc[n]) for pc in per_class if pc.get(n) is not None] for n in names]
      print(f'| {row} | ' + ' | '.join(f'{statistics.fmean(v):.1f}' if v else '-' for v in scores) + ' |')


if __name__ == '__main__':
  main()
