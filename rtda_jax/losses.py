"""Segmentation and adversarial losses, pure JAX.

Conventions: logits are [B, H, W, C] (NHWC, any float dtype), labels are integer train ids [B, H, W] with
`ignore_index` (255) marking pixels that take no part. Every loss casts to float32 first and returns a float32
scalar, so bfloat16 networks still get float32 losses and softmaxes. Labels outside [0, C) are treated as ignored.
An all-ignored batch gives 0.0 (never NaN), with finite (zero) gradients.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

IGNORE_INDEX = 255

SegLoss = Callable[[jax.Array, jax.Array], jax.Array]


def _log_probs(logits: jax.Array) -> jax.Array:
  """[..., C] logits -> [..., C] float32 log-softmax."""
  return jax.nn.log_softmax(jnp.asarray(logits).astype(jnp.float32), axis=-1)


def _valid_and_safe(labels: jax.Array, num_classes: int, ignore_index: int) -> tuple[jax.Array, jax.Array]:
  """[B, H, W] labels -> (valid mask [B, H, W] bool, labels with invalid pixels set to 0 [B, H, W] int32)."""
  labels = jnp.asarray(labels).astype(jnp.int32)
  valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
  return valid, jnp.where(valid, labels, 0)


def _label_log_prob(logp: jax.Array, safe_labels: jax.Array) -> jax.Array:
  """log p of the label class: [B, H, W, C], [B, H, W] -> [B, H, W]."""
  return jnp.take_along_axis(logp, safe_labels[..., None], axis=-1)[..., 0]


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array,
                        ignore_index: int = IGNORE_INDEX) -> tuple[jax.Array, jax.Array]:
  """Per-pixel cross-entropy [B, H, W] float32 (0 on ignored pixels) and the valid mask [B, H, W] bool."""
  logp = _log_probs(logits)  # [B, H, W, C]
  valid, safe = _valid_and_safe(labels, logp.shape[-1], ignore_index)
  return jnp.where(valid, -_label_log_prob(logp, safe), 0.0), valid


def _reduce(per_pixel: jax.Array, valid: jax.Array, weights: jax.Array | None,
            normalize: Literal['valid', 'all']) -> jax.Array:
  """sum(w * loss) over valid pixels, divided by the number of valid pixels ('valid') or of all pixels ('all')."""
  if weights is not None:
    per_pixel = per_pixel * jnp.asarray(weights).astype(jnp.float32)
  total = jnp.sum(jnp.where(valid, per_pixel, 0.0))
  if normalize == 'valid':
    count = jnp.sum(valid).astype(jnp.float32)
  elif normalize == 'all':
    count = jnp.float32(valid.size)
  else:
    raise ValueError(f"normalize must be 'valid' or 'all', got {normalize!r}")
  return total / jnp.maximum(count, 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None,
                  ignore_index: int = IGNORE_INDEX, normalize: Literal['valid', 'all'] = 'valid') -> jax.Array:
  """Softmax cross-entropy with ignore; optional per-pixel weights [B, H, W].

  Returns sum over valid pixels of (w * ce) divided by the number of valid pixels (normalize='valid', the
  default: with all weights 1 this is exactly the plain mean CE, as torch's `ignore_index` gives). DACS's
  pixel-wise weighted CE is `mean(w * ce)` over ALL pixels, ignored ones contributing 0: pass normalize='all'
  for that. The two agree whenever no pixel is ignored (e.g. a mixed label made only of pseudo-labels).
  """
  ce, valid = pixel_cross_entropy(logits, labels, ignore_index)
  return _reduce(ce, valid, weights, normalize)


def ohem_cross_entropy(logits: jax.Array, labels: jax.Array, thresh: float = 0.7,
                       min_kept_fraction: float = 1 / 16, ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """Online hard example mining CE (CoinCheung/BiSeNet `OhemCELoss`), with fixed shapes for jit.

  Keeps the valid pixels whose CE exceeds -log(thresh) (predicted probability of the label below `thresh`).
  If fewer than n_min = floor(min_kept_fraction * num_valid) are kept, the n_min pixels with the largest CE are
  kept instead. Returns the mean CE of the kept pixels (0.0 if none).
  """
  ce, valid = pixel_cross_entropy(logits, labels, ignore_index)
  flat = ce.reshape(-1)  # [N], 0 on ignored pixels as in the reference
  valid = valid.reshape(-1)  # [N]
  loss_thresh = -jnp.log(jnp.float32(thresh))
  hard = valid & (flat > loss_thresh)  # [N]
  n_hard = jnp.sum(hard)
  num_valid = jnp.sum(valid)
  n_min = jnp.floor(num_valid.astype(jnp.float32) * min_kept_fraction).astype(jnp.int32)
  k_max = max(int(flat.shape[0] * min_kept_fraction), 1)  # static upper bound of n_min
  n_min = jnp.minimum(n_min, k_max)

  def hard_mean() -> jax.Array:
    return jnp.sum(jnp.where(hard, flat, 0.0)) / jnp.maximum(n_hard, 1).astype(jnp.float32)

  def top_mean() -> jax.Array:
    top, _ = lax.top_k(flat, k_max)  # [k_max], descending; ignored pixels are 0 so never outrank a valid one
    keep = jnp.arange(k_max) < n_min
    return jnp.sum(jnp.where(keep, top, 0.0)) / jnp.maximum(n_min, 1).astype(jnp.float32)

  return lax.cond(n_hard < n_min, top_mean, hard_mean)


def focal_loss(logits: jax.Array, labels: jax.Array, gamma: float = 2.0,
               alpha: float | Sequence[float] | jax.Array | None = None, weights: jax.Array | None = None,
               ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """Multi-class focal loss: mean over valid pixels of -alpha_t (1 - p_t)^gamma log p_t.

  `alpha` is None (1), a scalar, or per-class factors [C] (alpha_t = alpha[label]). gamma=0 and alpha=None
  give the plain cross-entropy.
  """
  logp = _log_probs(logits)  # [B, H, W, C]
  valid, safe = _valid_and_safe(labels, logp.shape[-1], ignore_index)
  logpt = _label_log_prob(logp, safe)  # [B, H, W]
  loss = -logpt
  if gamma != 0:
    loss = loss * jnp.power(jnp.maximum(1.0 - jnp.exp(logpt), 0.0), gamma)
  if alpha is not None:
    alpha = jnp.asarray(alpha, dtype=jnp.float32)
    loss = loss * (alpha[safe] if alpha.ndim == 1 else alpha)
  return _reduce(loss, valid, weights, 'valid')


def ce_focal_loss(logits: jax.Array, labels: jax.Array, ce_weight: float = 1.0, focal_weight: float = 1.0,
                  gamma: float = 2.0, alpha: float | Sequence[float] | jax.Array | None = None,
                  ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """ce_weight * cross_entropy + focal_weight * focal_loss."""
  return (ce_weight * cross_entropy(logits, labels, ignore_index=ignore_index)
          + focal_weight * focal_loss(logits, labels, gamma=gamma, alpha=alpha, ignore_index=ignore_index))


def dice_loss(logits: jax.Array, labels: jax.Array, smooth: float = 1.0,
              ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """Soft multi-class Dice loss: 1 - mean_c (2 sum(p_c y_c) + s) / (sum p_c + sum y_c + s).

  Sums run over the batch and the valid pixels; every class counts in the mean (an absent class that is not
  predicted scores about 1 thanks to the smoothing term).
  """
  logp = _log_probs(logits)  # [B, H, W, C]
  num_classes = logp.shape[-1]
  valid, safe = _valid_and_safe(labels, num_classes, ignore_index)
  mask = valid[..., None].astype(jnp.float32)  # [B, H, W, 1]
  probs = jnp.exp(logp) * mask  # [B, H, W, C]
  onehot = jax.nn.one_hot(safe, num_classes, dtype=jnp.float32) * mask  # [B, H, W, C]
  axes = tuple(range(probs.ndim - 1))
  inter = jnp.sum(probs * onehot, axis=axes)  # [C]
  denom = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)  # [C]
  dice = (2.0 * inter + smooth) / (denom + smooth)
  return 1.0 - jnp.mean(dice)


def entropy(logits: jax.Array) -> jax.Array:
  """Per-pixel entropy of the softmax, natural log: [B, H, W, C] -> [B, H, W] float32."""
  logp = _log_probs(logits)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def fda_entropy_penalty(logits: jax.Array, eta: float = 2.0) -> jax.Array:
  """FDA's robust entropy: mean over pixels of ((H / ln C)^2 + 1e-8)^eta, H the per-pixel entropy.

  FDA hard-codes ln 19 = 2.9444; here the normaliser is ln C of the logits given.
  """
  ent = entropy(logits) / math.log(jnp.shape(logits)[-1])  # [B, H, W], in [0, 1]
  return jnp.mean(jnp.power(ent ** 2 + 1e-8, eta))


def bce_with_logits(logits: jax.Array, target: float) -> jax.Array:
  """Mean binary cross-entropy of sigmoid(logits) against a constant target in [0, 1] (torch BCEWithLogitsLoss)."""
  x = jnp.asarray(logits).astype(jnp.float32)
  return jnp.mean(jnp.maximum(x, 0.0) - x * target + jnp.log1p(jnp.exp(-jnp.abs(x))))


def least_squares(logits: jax.Array, target: float) -> jax.Array:
  """Mean of (logits - target)^2 on the raw discriminator outputs (LSGAN, torch MSELoss)."""
  x = jnp.asarray(logits).astype(jnp.float32)
  return jnp.mean(jnp.square(x - target))


def adversarial_loss(logits: jax.Array, target: float, kind: Literal['bce', 'ls'] = 'bce') -> jax.Array:
  """Discriminator-output loss towards `target` (AdaptSegNet: source = 0, target domain = 1)."""
  if kind == 'bce':
    return bce_with_logits(logits, target)
  if kind == 'ls':
    return least_squares(logits, target)
  raise ValueError(f"unknown adversarial loss kind {kind!r}; use 'bce' or 'ls'")


_SEGMENTATION_LOSSES: dict[str, Callable[..., jax.Array]] = {
    'ce': cross_entropy,
    'ohem': ohem_cross_entropy,
    'focal': focal_loss,
    'ce_focal': ce_focal_loss,
    'dice': dice_loss,
}


def get_segmentation_loss(name: str, **kwargs) -> SegLoss:
  """The loss called `name` (ce | ohem | focal | ce_focal | dice) as (logits, labels) -> scalar.

  Keyword arguments (e.g. thresh=0.7 for ohem) are bound to the loss.
  """
  if name not in _SEGMENTATION_LOSSES:
    raise ValueError(f'unknown segmentation loss {name!r}; choose one of {sorted(_SEGMENTATION_LOSSES)}')
  return functools.partial(_SEGMENTATION_LOSSES[name], **kwargs)
