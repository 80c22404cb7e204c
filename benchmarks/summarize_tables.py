"""Summarises the runs of benchmarks/run_tables.sh: one Markdown row per method, mean and sample standard deviation
of the target mIoU over seeds, each seed's value, the share of the source-only -> oracle gap won back, and the
mean wall time.

  python benchmarks/summarize_tables.py [runs/table] [--per-class]
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

ROW_ORDER = ('source_only', 'source_only_light', 'source_only_strong', 'adv_single', 'adv_multi', 'adv_feature',
             'adv_lambda0', 'adv_lambda001', 'fda_b001', 'fda_b005', 'fda_b009', 'fda_mbt', 'fda_mbt_st', 'dacs', 'oracle')


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
  parser.add_argument('root', nargs='?', default='runs/table')
  parser.add_argument('--per-class', action='store_true', help='also print the per-class IoU means')
  args = parser.parse_args()
  runs = load(args.root)
  if not runs:
    sys.exit(f'No finished runs (eval.json) under {args.root!r}; run benchmarks/run_tables.sh first.')
  miou = {row: [r['eval']['miou'] for _, r in sorted(seeds.items())] for row, seeds in runs.items()}
  low = statistics.fmean(miou['source_only']) if 'source_only' in miou else None
  high = statistics.fmean(miou['oracle']) if 'oracle' in miou else None
  rows = [r for r in ROW_ORDER if r in runs] + sorted(set(runs) - set(ROW_ORDER))

  print('| row | seeds | target mIoU (mean ± std) | per seed | gap won back | train images/s | wall (s, mean) |')
  print('|---|---|---|---|---|---|---|')
  for row in rows:
    m, s = mean_std(miou[row])
    seeds = sorted(runs[row])
    per_seed = ', '.join(f's{k}: {runs[row][k]["eval"]["miou"]:.2f}' for k in seeds)
    gap = f'{100 * (m - low) / (high - low):+.0f}%' if low is not None and high is not None and high != low else '-'
    walls = [r['wall_s'] for r in runs[row].values() if r['wall_s'] is not None]
    wall = f'{statistics.fmean(walls):.0f}' if walls else '-'
    speeds = [r['images_per_sec'] for r in runs[row].values() if r['images_per_sec'] is not None]
    speed = f'{statistics.fmean(speeds):.1f}' if speeds else '-'
    print(f'| {row} | {len(seeds)} | {m:.2f} ± {s:.2f} | {per_seed} | {gap} | {speed} | {wall} |')

  if args.per_class:
    names = [label.name for label in labels.TRAIN_LABELS]
    print()
    print('| row | ' + ' | '.join(names) + ' |')
    print('|---|' + '---|' * len(names))
    for row in rows:
      per_class = [r['eval']['per_class_iou'] for r in runs[row].values()]
      means = [statistics.fmean(float(pc[n]) for pc in per_class) for n in names]
      print(f'| {row} | ' + ' | '.join(f'{v:.1f}' for v in means) + ' |')


if __name__ == '__main__':
  main()
