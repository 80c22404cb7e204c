"""Segmentation metrics: a confusion matrix built on device, and the Cityscapes scores derived from it on the host.

Usage:
  total = None
  for batch in val:
    preds = jnp.argmax(logits, -1)                        # [B, H, W]
    total = accumulate(total, confusion_matrix(preds, batch['label']))
  scores = compute_metrics(total, CLASS_NAMES)             # every value in percent

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

from rtda_jax.labels import CLASS_NAMES, IGNORE, NUM_CLASSES


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


def compute_metrics(cm: np.ndarray, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
  """Scores of a [C, C] confusion matrix (rows = ground truth), every value in percent (0..100).

  Keys: miou, per_class_iou ({class name: IoU or None}), pixel_accuracy, mean_class_accuracy, fwiou.
  IoU_c = TP / (TP + FP + FN). A class absent from both ground truth and prediction has no IoU (None) and is
  left out of the mIoU, as the official Cityscapes evaluation does (nan, then nanmean). Mean class accuracy
  averages TP / GT count over the classes present in the ground truth. FWIoU = sum_c (GT count_c / total) IoU_c.
  A scalar that is undefined (an empty matrix) is None, so the dict is always valid JSON.
  """
  cm = np.asarray(cm, dtype=np.float64)  # int64 counts are exact in float64 up to 2**53
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'confusion matrix must be square [C, C], got {cm.shape}')
  if len(class_names) != cm.shape[0]:
    raise ValueError(f'{len(class_names)} class names for a {cm.shape[0]}-class confusion matrix')
  tp = np.diag(cm)  # [C]
  gt = cm.sum(axis=1)  # [C]
  pred = cm.sum(axis=0)  # [C]
  union = gt + pred - tp  # [C] = TP + FP + FN
  total = cm.sum()
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = np.where(union > 0, tp / union, np.nan)  # [C]
    class_acc = np.where(gt > 0, tp / gt, np.nan)  # [C]
  miou = _nanmean_or_none(iou)
  mean_class_acc = _nanmean_or_none(class_acc)
  if total > 0:
    pixel_acc = float(tp.sum() / total)
    fwiou = float(np.sum(np.where(gt > 0, gt / total * np.nan_to_num(iou), 0.0)))
  else:
    pixel_acc = fwiou = None

  def pct(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else 100.0 * x

  return {
      'miou': pct(miou),
      'per_class_iou': {name: pct(float(v)) for name, v in zip(class_names, iou)},
      'pixel_accuracy': pct(pixel_acc),
      'mean_class_accuracy': pct(mean_class_acc),
      'fwiou': pct(fwiou),
  }
