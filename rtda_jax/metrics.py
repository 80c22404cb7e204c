"""Segmentation metrics: a confusion matrix built on device, and the Cityscapes scores derived from it on the host.

Usage:
  total = None
  for batch in val:
    preds = jnp.argmax(logits, -1)                        # [B, H, W]
    total = accumulate(total, confusion_matrix(preds, batch['label']))
  scores = compute_metrics(total, CLASS_NAMES)             # every value in percent
  scores.update(class_set_metrics(total, CLASS_NAMES, 'synthia16'))  # SYNTHIA -> Cityscapes: 16/13-class means

Overflow: a batch matrix is int32 (JAX disables int64 by default), exact while a single call sees fewer than
2**31 pixels (about 1000 images at 1024x2048). The running total lives on the host as numpy int64, so a whole
validation set (Cityscapes val is 1e9 pixels, beyond int32) is counted exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rtda_jax.labels import CLASS_NAMES, IGNORE, NUM_CLASSES, SYNTHIA13_CLASS_NAMES, SYNTHIA16_CLASS_NAMES

# Evaluation class sets (config eval.class_set): the classes the class means average over, and the means reported.
# 'all': every class of the matrix. 'synthia16' (SYNTHIA -> Cityscapes): the 16 classes SYNTHIA labels; eval.json
# then holds mIoU over them (`miou`, also `miou_16`) and mIoU* over 13 (`miou_13`: without wall, fence, pole).
CLASS_SETS: dict[str, tuple[str, ...] | None] = {'all': None, 'synthia16': SYNTHIA16_CLASS_NAMES}
SUBSET_MIOUS: dict[str, dict[str, tuple[str, ...]]] = {
    'all': {}, 'synthia16': {'miou_16': SYNTHIA16_CLASS_NAMES, 'miou_13': SYNTHIA13_CLASS_NAMES}}


@functools.partial(jax.jit, static_argnames=('num_classes', 'ignore_index'))
def confusion_matrix(preds: jax.Array, labels: jax.Array, num_classes: int = NUM_CLASSES,
                     ignore_index: int = IGNORE) -> jax.Array:
  """[C, C] int32 pixel counts, rows = ground truth, columns = prediction.

  preds and labels are integer maps of the same shape (e.g. [B, H, W]). A pixel counts when its label is a class
  (not `ignore_index`, within [0, C)). Predictions are expected to be class indices in [0, C) (argmax output);
  a pixel whose prediction is outside that range is not counted.
  """
  preds = jnp.asarray(preds).astype(jnp.int32).reshape(-1)  # [N]
  labels = jnp.asarray(labels).astype(jnp.int32).reshape(-1)  # [N]
  if preds.shape != labels.shape:
    raise ValueError(f'preds and labels differ in size: {preds.shape} vs {labels.shape}')
  c = num_classes
  valid = (labels != ignore_index) & (labels >= 0) & (labels < c) & (preds >= 0) & (preds < c)
  index = jnp.where(valid, labels * c + preds, c * c)  # [N]; invalid pixels go to an extra bin, dropped below
  counts = jnp.bincount(index, length=c * c + 1)  # [C*C + 1]
  return counts[:c * c].reshape(c, c).astype(jnp.int32)


def accumulate(total: np.ndarray | None, batch_cm: jax.Array | np.ndarray) -> np.ndarray:
  """Adds a batch confusion matrix to the running total, kept on the host as int64 (None starts a new total)."""
  batch = np.asarray(jax.device_get(batch_cm)).astype(np.int64)
  if batch.min(initial=0) < 0:
    raise OverflowError('negative count in a batch confusion matrix: the int32 batch counts overflowed; '
                        'evaluate fewer pixels per confusion_matrix call')
  if total is None:
    return batch
  if total.shape != batch.shape:
    raise ValueError(f'confusion matrix shapes differ: total {total.shape} vs batch {batch.shape}')
  return np.asarray(total, dtype=np.int64) + batch


def _nanmean_or_none(values: np.ndarray) -> float | None:
  values = values[~np.isnan(values)]
  return float(values.mean()) if values.size else None


def _pct(x: float | None) -> float | None:
  return None if x is None or math.isnan(x) else 100.0 * x


def _class_scores(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, np.ndarray]:
  """Per-class IoU, Dice and accuracy ([C] float64 fractions, nan where undefined) of a [C, C] confusion matrix."""
  cm = np.asarray(cm, dtype=np.float64)  # int64 counts are exact in float64 up to 2**53
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'confusion matrix must be square [C, C], got {cm.shape}')
  if len(class_names) != cm.shape[0]:
    raise ValueError(f'{len(class_names)} class names for a {cm.shape[0]}-class confusion matrix')
  tp = np.diag(cm)  # [C]
  gt = cm.sum(axis=1)  # [C] = TP + FN
  pred = cm.sum(axis=0)  # [C] = TP + FP
  union = gt + pred - tp  # [C] = TP + FP + FN
  with np.errstate(divide='ignore', invalid='ignore'):
    return {'cm': cm, 'tp': tp, 'gt': gt,
            'iou': np.where(union > 0, tp / union, np.nan),
            'dice': np.where(gt + pred > 0, 2 * tp / (gt + pred), np.nan),  # 2TP / (2TP + FP + FN)
            'accuracy': np.where(gt > 0, tp / gt, np.nan)}


def compute_metrics(cm: np.ndarray, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
  """Scores of a [C, C] confusion matrix (rows = ground truth), every value in percent (0..100).

  Keys: miou, per_class_iou ({class name: IoU or None}), per_class_dice, mean_dice, pixel_accuracy,
  mean_class_accuracy, fwiou. IoU_c = TP / (TP + FP + FN); Dice_c (F1) = 2 TP / (2 TP + FP + FN). A class absent
  from both ground truth and prediction has no IoU and no Dice (None) and is left out of their means, as the official
  Cityscapes evaluation does (nan, then nanmean). Mean class accuracy averages TP / GT count over the classes present
  in the ground truth. FWIoU = sum_c (GT count_c / total) IoU_c. A scalar that is undefined (an empty matrix) is None,
  so the dict is always valid JSON.
  """
  s = _class_scores(cm, class_names)
  iou, gt, total = s['iou'], s['gt'], s['cm'].sum()
  if total > 0:
    pixel_acc = float(s['tp'].sum() / total)
    fwiou = float(np.sum(np.where(gt > 0, gt / total * np.nan_to_num(iou), 0.0)))
  else:
    pixel_acc = fwiou = None
  return {**_per_class_scores(class_names, iou, s['dice'], s['accuracy']), 'pixel_accuracy': _pct(pixel_acc),
          'fwiou': _pct(fwiou)}


def _per_class_scores(class_names: Sequence[str], iou: np.ndarray, dice: np.ndarray,
                      accuracy: np.ndarray) -> dict[str, Any]:
  """miou, per_class_iou, per_class_dice, mean_dice and mean_class_accuracy (percent) of [C] scores, nan where a
  class has none (left out of the means, None in the per-class dicts)."""
  return {
      'miou': _pct(_nanmean_or_none(iou)),
      'per_class_iou': {name: _pct(float(v)) for name, v in zip(class_names, iou)},
      'per_class_dice': {name: _pct(float(v)) for name, v in zip(class_names, dice)},
      'mean_dice': _pct(_nanmean_or_none(dice)),
      'mean_class_accuracy': _pct(_nanmean_or_none(accuracy)),
  }


def class_set_names(class_set: str, class_names: Sequence[str] = CLASS_NAMES) -> tuple[str, ...]:
  """The classes of `class_names` that `class_set` (a key of CLASS_SETS) evaluates; ValueError for an unknown set
  or one with classes the matrix lacks."""
  if class_set not in CLASS_SETS:
    raise ValueError(f'Unknown class set {class_set!r}; choose one of {tuple(CLASS_SETS)} (config eval.class_set).')
  wanted = CLASS_SETS[class_set]
  if wanted is None:
    return tuple(class_names)
  missing = [n for n in wanted if n not in class_names]
  if missing:
    raise ValueError(f'Class set {class_set!r} needs classes {missing} that the {len(class_names)}-class confusion '
                     'matrix lacks.')
  return tuple(n for n in class_names if n in wanted)


def class_set_metrics(cm: np.ndarray, class_names: Sequence[str], class_set: str) -> dict[str, Any]:
  """The scores of `compute_metrics` that an evaluation class set changes, to update its result with.

  Always 'class_set', and the set's named means SUBSET_MIOUS[class_set] (synthia16: miou_16, miou_13). For a set
  smaller than the matrix (e.g. 'synthia16' on a 19-class one): every class outside it gets None in per_class_iou /
  per_class_dice (printed as '-'), and miou, mean_dice and mean_class_accuracy average over the set's classes only.
  pixel_accuracy and fwiou stay those of the whole matrix (every labelled pixel counts, as in the references'
  19-class confusion matrices).
  """
  names = class_set_names(class_set, class_names)
  out: dict[str, Any] = {'class_set': class_set}
  if len(names) == len(class_names) and not SUBSET_MIOUS[class_set]:
    return out
  s = _class_scores(cm, class_names)
  member = lambda subset: np.array([n in subset for n in class_names])  # [C] bool
  if len(names) < len(class_names):
    inside = member(names)
    out.update(_per_class_scores(class_names, *(np.where(inside, s[k], np.nan) for k in ('iou', 'dice', 'accuracy'))))
  for key, subset in SUBSET_MIOUS[class_set].items():
    out[key] = _pct(_nanmean_or_none(np.where(member(subset), s['iou'], np.nan)))
  return out
