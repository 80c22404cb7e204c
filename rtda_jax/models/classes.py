"""A segmentation head with outputs for a subset of the 19 classes (e.g. SYNTHIA's 16), seen by the rest of the
project in the 19-class label space.

With `model.output_classes='synthia16'` the networks' classifiers (BiSeNet's fusion module, final and supervision
convs; DeepLab-v2's ASPP classifiers) have 16 outputs, as in the SYNTHIA models of ADVENT and others. Their logits
are then placed at those classes' train ids of a 19-channel tensor whose other channels hold ABSENT_LOGIT, so the
losses, the softmax, the discriminators, pseudo-labels, metrics, prediction and export work unchanged: a softmax over
the 19 channels equals the softmax over the 16 (exp(ABSENT_LOGIT - anything the logits reach) is 0 in float32), an
argmax never picks an absent class, and p * log p is 0 there (finite, unlike -inf). Labels of the absent classes
(Cityscapes' terrain, truck and train) are ignored in training and evaluation (`ignore_absent`), as a 16-class
evaluation does.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from rtda_jax import labels as labels_lib

# Large enough that exp(ABSENT_LOGIT - logsumexp) underflows to exactly 0 in float32 (below e^-104) for any logits
# of a trained net (|logit| << 1e4), small enough that log-softmax stays finite and bfloat16-representable.
ABSENT_LOGIT = -1e4

OUTPUT_CLASSES: dict[str, tuple[str, ...] | None] = {'all': None, 'synthia16': labels_lib.SYNTHIA16_CLASS_NAMES}


def output_ids(output_classes: str | None) -> tuple[int, ...] | None:
  """The train ids the classifier has outputs for (`model.output_classes`); None for 'all' (every class)."""
  name = output_classes or 'all'
  if name not in OUTPUT_CLASSES:
    raise ValueError(f'config.model.output_classes={name!r} is not a class set; choose one of '
                     f'{tuple(OUTPUT_CLASSES)}.')
  names = OUTPUT_CLASSES[name]
  return None if names is None else tuple(labels_lib.CLASS_NAMES.index(n) for n in names)


def num_outputs(num_classes: int, ids: Sequence[int] | None) -> int:
  """The classifier's output count: len(ids), or num_classes without a subset."""
  if ids is None:
    return num_classes
  if len(set(ids)) != len(ids) or not all(0 <= i < num_classes for i in ids):
    raise ValueError(f'Output class ids {tuple(ids)} must be distinct train ids below num_classes={num_classes}.')
  return len(ids)


def expand(logits: jnp.ndarray, ids: Sequence[int] | None, num_classes: int) -> jnp.ndarray:
  """[..., len(ids)] -> [..., num_classes]: channel k at train id ids[k], ABSENT_LOGIT elsewhere (no-op for None)."""
  if ids is None:
    return logits
  full = jnp.full(logits.shape[:-1] + (num_classes,), ABSENT_LOGIT, logits.dtype)
  return full.at[..., np.asarray(ids)].set(logits)


def ignore_absent(label: np.ndarray, ids: Sequence[int] | None) -> np.ndarray:
  """Train-id labels with every class outside `ids` set to IGNORE (unchanged for None)."""
  if ids is None:
    return label
  keep = np.zeros(256, bool)
  keep[np.asarray(ids)] = True
  label = np.asarray(label)
  return np.where(keep[label], label, np.asarray(labels_lib.IGNORE, label.dtype))
