"""Quality of a pseudo-label folder against the target's ground truth (the embedded benchmark has it; training
never reads it): share of pixels kept, accuracy of the kept ones, and per predicted class its share of the kept
pixels, its share in the truth, its precision and the true classes it covers most.

  python benchmarks/pseudo_label_quality.py data/pseudo/fda_mbt_s0 [data/synthetic/cityscapes]
"""

import glob
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rtda_jax import labels  # noqa: E402


def main(argv: list[str]) -> None:
  pseudo_dir, truth_dir = argv[0], (argv[1] if len(argv) > 1 else 'data/synthetic/cityscapes')
  paths = sorted(glob.glob(os.path.join(pseudo_dir, 'gtFine', 'train', '*', '*_gtFine_labelIds.png')))
  if not paths:
    sys.exit(f'No gtFine/train/*/*_gtFine_labelIds.png under {pseudo_dir!r}: pass a --mode=pseudolabel folder.')
  n = labels.NUM_CLASSES
  confusion = np.zeros((n, n), np.int64)  # [true, pseudo] over pixels both label
  labelled = 0
  for path in paths:
    truth_path = os.path.join(truth_dir, os.path.relpath(path, pseudo_dir))
    if not os.path.exists(truth_path):
      sys.exit(f'{truth_path} is missing: the pseudo-labels do not match the ground-truth folder {truth_dir!r}.')
    pseudo = labels.to_train_ids(np.array(Image.open(path)))
    truth = labels.to_train_ids(np.array(Image.open(truth_path)))
    both = (pseudo != labels.IGNORE) & (truth != labels.IGNORE)
    labelled += int((truth != labels.IGNORE).sum())
    confusion += np.bincount(truth[both].astype(np.int64) * n + pseudo[both], minlength=n * n).reshape(n, n)
  kept = confusion.sum()
  names = [label.name for label in labels.TRAIN_LABELS]
  print(f'{len(paths)} images: {100 * kept / labelled:.1f}% of the labelled pixels kept, '
        f'{100 * np.trace(confusion) / kept:.1f}% of those right')
  print('| pseudo class | share of kept pixels | true share, same pixels | precision | true classes (top 3) |')
  print('| --- | ---: | ---: | ---: | --- |')
  for c in np.flatnonzero(confusion.sum(0)):
    column = confusion[:, c]
    top = ', '.join(f'{names[t]} {100 * column[t] / column.sum():.0f}%' for t in np.argsort(-column)[:3])
    print(f'| {names[c]} | {100 * column.sum() / kept:.1f}% | {100 * confusion[c].sum() / kept:.1f}% | '
          f'{100 * column[c] / column.sum():.1f}% | {top} |')


if __name__ == '__main__':
  main(sys.argv[1:])
