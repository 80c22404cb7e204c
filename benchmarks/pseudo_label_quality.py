"""Quality of a pseudo-label folder against the target's ground truth (the embedded benchmark has it; training
never reads it): the rule and thresholds that made it (its pseudolabels.json), share of pixels kept, accuracy of the
kept ones, and per predicted class its threshold, its share of the kept pixels, its share in the truth, its
precision (the share of its kept pixels that are right) and the true classes it covers most. Works for every
`mbt.rule` (fda, cbst, agreement): compare folders made with different rules side by side.

  python benchmarks/pseudo_label_quality.py data/pseudo/fda_mbt_s0 [data/synthetic/cityscapes]
"""

import glob
import json
import os
import sys
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rtda_jax import labels, selftrain  # noqa: E402


def quality(pseudo_dir: str, truth_dir: str) -> dict[str, Any]:
  """{'num_images', 'kept_fraction', 'accuracy', 'info' (pseudolabels.json or {}), 'confusion' [true, pseudo] int64,
  'per_class': {name: {'share', 'true_share', 'precision', 'top_true'}} over the classes with kept pixels}."""
  paths = sorted(glob.glob(os.path.join(pseudo_dir, 'gtFine', 'train', '*', '*_gtFine_labelIds.png')))
  if not paths:
    raise FileNotFoundError(f'No gtFine/train/*/*_gtFine_labelIds.png under {pseudo_dir!r}: pass a '
                            '--mode=pseudolabel folder.')
  n = labels.NUM_CLASSES
  confusion = np.zeros((n, n), np.int64)  # [true, pseudo] over pixels both label
  labelled = 0
  for path in paths:
    truth_path = os.path.join(truth_dir, os.path.relpath(path, pseudo_dir))
    if not os.path.exists(truth_path):
      raise FileNotFoundError(f'{truth_path} is missing: the pseudo-labels do not match the ground-truth folder '
                              f'{truth_dir!r}.')
    pseudo = labels.to_train_ids(np.array(Image.open(path)))
    truth = labels.to_train_ids(np.array(Image.open(truth_path)))
    both = (pseudo != labels.IGNORE) & (truth != labels.IGNORE)
    labelled += int((truth != labels.IGNORE).sum())
    confusion += np.bincount(truth[both].astype(np.int64) * n + pseudo[both], minlength=n * n).reshape(n, n)
  info_path = os.path.join(pseudo_dir, selftrain.INFO_FILE)
  info = json.load(open(info_path)) if os.path.exists(info_path) else {}
  kept = int(confusion.sum())
  names = labels.CLASS_NAMES
  per_class = {}
  for c in np.flatnonzero(confusion.sum(0)):
    column = confusion[:, c]
    per_class[names[c]] = {'share': column.sum() / kept, 'true_share': confusion[c].sum() / kept,
                           'precision': column[c] / column.sum(),
                           'top_true': [(names[t], column[t] / column.sum()) for t in np.argsort(-column)[:3]
                                        if column[t]]}
  return {'num_images': len(paths), 'kept_fraction': kept / max(1, labelled),
          'accuracy': np.trace(confusion) / max(1, kept), 'info': info, 'confusion': confusion,
          'per_class': per_class}


def main(argv: list[str]) -> None:
  pseudo_dir, truth_dir = argv[0], (argv[1] if len(argv) > 1 else 'data/synthetic/cityscapes')
  try:
    q = quality(pseudo_dir, truth_dir)
  except FileNotFoundError as e:
    sys.exit(str(e))
  info = q['info']
  if info:
    params = ', '.join(f'{k} {info[k]}' for k in ('percentile', 'portion', 'max_threshold') if k in info)
    print(f"rule: {info.get('rule', 'fda')} ({params})")
  precisions = [v['precision'] for v in q['per_class'].values()]
  print(f"{q['num_images']} images: {100 * q['kept_fraction']:.1f}% of the labelled pixels kept, "
        f"{100 * q['accuracy']:.1f}% of those right, mean per-class precision {100 * np.mean(precisions):.1f}%")
  thresholds = info.get('thresholds', {})
  print('| pseudo class | threshold | share of kept pixels | true share, same pixels | precision | '
        'true classes (top 3) |')
  print('| --- | ---: | ---: | ---: | ---: | --- |')
  for name, v in q['per_class'].items():
    top = ', '.join(f'{t} {100 * s:.0f}%' for t, s in v['top_true'])
    threshold = f"{thresholds[name]:.4f}" if name in thresholds else '-'
    print(f"| {name} | {threshold} | {100 * v['share']:.1f}% | {100 * v['true_share']:.1f}% | "
          f"{100 * v['precision']:.1f}% | {top} |")


if __name__ == '__main__':
  main(sys.argv[1:])
