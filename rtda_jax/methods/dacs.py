"""DACS: domain adaptation via cross-domain mixed sampling (Tranheden et al., WACV 2021; vikolss/DACS).

Per step, one jitted function:
1. the mean teacher (an EMA of the student, no gradient, eval mode by default) labels the un-augmented target batch:
   pseudo-label = argmax of its softmax, confidence = max probability;
2. ClassMix: for source image i, half of the classes in its label (ceil(n / 2) of the n present, at random) form a
   mask; those source pixels are pasted onto target image i. Mixed label = source label inside the mask, the
   pseudo-label outside; pixel weight = 1 inside, the confidence weight outside (DACS's 'threshold_uniform': the
   fraction of the batch's target pixels whose max probability is >= 0.968, one number for the whole batch);
3. the mixed images get the strong photometric augmentation (colour jitter, Gaussian blur; `dacs.augment`);
4. student loss = segmentation loss on the source (with the auxiliary heads, as in `supervised`)
   + consistency_weight * mean over ALL mixed pixels of (weight x CE), ignored pixels contributing 0
   (`losses.cross_entropy(..., normalize='all')`, DACS's `CrossEntropyLoss2dPixelWiseWeighted`);
5. after the student's SGD step, teacher <- alpha * teacher + (1 - alpha) * student, alpha = min(1 - 1 / (t + 1), 0.99)
   with t the 0-based index of the step just taken (DACS's `i_iter`), so the first step copies the student.

Where the reference code and the paper's text differ, the code is followed; the choices (and the configurable ones)
are listed in the `configs/dacs.py` docstring. Evaluation uses the student, as DACS's `evaluate(model, ...)` does.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from rtda_jax import augment, losses
from rtda_jax.methods import base, supervised

PIXEL_WEIGHTS = ('threshold_uniform', 'threshold', 'none')
TEACHER_BN = ('running', 'batch')


@flax.struct.dataclass
class DACSState:
  seg: base.TrainState  # the student
  teacher: dict[str, Any]  # EMA variables of the student: {'params', 'batch_stats'}; never receives gradients
  key: jax.Array  # root key of the step randomness; the step's key is fold_in(key, step)

  @property
  def step(self) -> jax.Array:
    return self.seg.step


# ---- ClassMix -----------------------------------------------------------------------------------------------------

def class_slots(label: jax.Array, num_classes: int) -> jax.Array:
  """Train ids [H, W] -> slot ids [H, W] int32: the class 0..C-1, or C for the ignore label (and anything invalid)."""
  label = label.astype(jnp.int32)
  return jnp.where((label >= 0) & (label < num_classes), label, num_classes)


def choose_classes(key: jax.Array, label: jax.Array, num_classes: int,
                   ignore_is_class: bool = True) -> tuple[jax.Array, jax.Array]:
  """Which classes of one label map [H, W] ClassMix pastes: (chosen [C + 1] bool, present [C + 1] bool).

  Slot C is the ignore label. Of the n classes present, ceil(n / 2) = (n + n % 2) / 2 are chosen uniformly at random
  without replacement (DACS draws int((n + n % 2) / 2) of the values of `torch.unique(labels[i])` with NumPy's global
  `choice(..., replace=False)`; its filter of the ignore label is commented out, so the ignore label counts as a
  class: `ignore_is_class=True`). Fixed shapes: a random priority per slot, and the ceil(n / 2) present slots of lowest
  priority win.
  """
  slots = class_slots(label, num_classes)
  present = jnp.zeros((num_classes + 1,), bool).at[slots.reshape(-1)].set(True)  # [C + 1]
  if not ignore_is_class:
    present = present.at[num_classes].set(False)
  n = jnp.sum(present)
  k = (n + n % 2) // 2
  priority = jnp.where(present, jax.random.uniform(key, (num_classes + 1,)), 2.0)  # absent slots rank last
  rank = jnp.argsort(jnp.argsort(priority))  # [C + 1], 0 = lowest priority
  return present & (rank < k), present


def class_mix_mask(key: jax.Array, label: jax.Array, num_classes: int, ignore_is_class: bool = True) -> jax.Array:
  """ClassMix mask [H, W] bool of one source label map: its pixels of the chosen classes."""
  chosen, _ = choose_classes(key, label, num_classes, ignore_is_class)
  return chosen[class_slots(label, num_classes)]


def class_mix_masks(key: jax.Array, labels: jax.Array, num_classes: int, ignore_is_class: bool = True) -> jax.Array:
  """[B, H, W] source labels -> [B, H, W] bool masks, one key per image."""
  keys = jax.random.split(key, labels.shape[0])
  return jax.vmap(lambda k, l: class_mix_mask(k, l, num_classes, ignore_is_class))(keys, labels)


def mix(masks: jax.Array, source: jax.Array, target: jax.Array) -> jax.Array:
  """Source i where mask i is set, target i elsewhere; masks [B, H, W], source / target [B, H, W, ...]."""
  m = masks.reshape(masks.shape + (1,) * (source.ndim - masks.ndim))
  return jnp.where(m, source, target)


# ---- mean teacher -------------------------------------------------------------------------------------------------

def pseudo_labels(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Teacher logits [B, H, W, C] -> (argmax labels [B, H, W] int32, max softmax probability [B, H, W] float32)."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.argmax(probs, axis=-1).astype(jnp.int32), jnp.max(probs, axis=-1)


def confidence_weights(max_probs: jax.Array, threshold: float = 0.968, mode: str = 'threshold_uniform') -> jax.Array:
  """Weights [B, H, W] of the pseudo-labelled pixels from the teacher's max probabilities [B, H, W].

  'threshold_uniform' (DACS): the fraction of ALL the batch's pixels with max probability >= threshold, the same for
  every pixel; 'threshold': 1 where that pixel is confident, else 0; 'none': 1.
  """
  confident = (max_probs >= threshold).astype(jnp.float32)
  if mode == 'threshold_uniform':
    return jnp.broadcast_to(jnp.mean(confident), max_probs.shape)
  if mode == 'threshold':
    return confident
  if mode == 'none':
    return jnp.ones_like(max_probs)
  raise ValueError(f'config.dacs.pixel_weight={mode!r}: choose one of {PIXEL_WEIGHTS}.')


def ema_alpha(step: jax.Array, max_alpha: float = 0.99) -> jax.Array:
  """min(1 - 1 / (step + 1), max_alpha) for the 0-based index `step` of the step just taken (0 on the first)."""
  return jnp.minimum(1.0 - 1.0 / (jnp.asarray(step).astype(jnp.float32) + 1.0), max_alpha)


def ema_update(teacher: Any, student: Any, alpha: jax.Array) -> Any:
  """alpha * teacher + (1 - alpha) * student, leaf by leaf."""
  return jax.tree.map(lambda t, s: alpha * t + (1.0 - alpha) * s, teacher, student)


# ---- the method ---------------------------------------------------------------------------------------------------

@base.register('dacs')
class DACS(base.Method):
  domains = ('source', 'target')

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    d = config.dacs
    if d.pixel_weight not in PIXEL_WEIGHTS:
      raise ValueError(f'config.dacs.pixel_weight={d.pixel_weight!r}: choose one of {PIXEL_WEIGHTS}.')
    if d.teacher_bn not in TEACHER_BN:
      raise ValueError(f'config.dacs.teacher_bn={d.teacher_bn!r}: choose one of {TEACHER_BN}.')
    self.augment = augment.batched(augment.build(config.train.augment))  # the source batch (DACS: none)
    self.strong = augment.batched(augment.photometric(d.augment))  # the mixed images
    self.seg_loss = supervised.segmentation_loss_fn(self)
    self.lr_schedule = base.learning_rate_schedule(config.train)

  def init(self, key: jax.Array, shapes: dict[str, tuple[int, int]]) -> DACSState:
    seg_key, step_key = jax.random.split(key)
    seg = supervised.init_segmentation_state(self, seg_key, shapes['source'])
    teacher = jax.tree.map(lambda x: jnp.array(x, copy=True), seg.variables)  # own buffers: the state is donated
    return DACSState(seg=seg, teacher=teacher, key=step_key)

  def teacher_logits(self, teacher: dict[str, Any], images: jax.Array) -> jax.Array:
    """The teacher's logits [B, H, W, C]: eval mode ('running'), or BatchNorm on the batch's own statistics ('batch',
    as DACS's teacher, which stays in train mode; the statistics it computes are dropped)."""
    teacher = jax.lax.stop_gradient(teacher)
    if self.config.dacs.teacher_bn == 'batch':
      return self.model.apply(teacher, images, train=True, mutable=['batch_stats'])[0]['logits']
    return self.model.apply(teacher, images, train=False)['logits']

  def mix_batch(self, teacher: dict[str, Any], src_images: jax.Array, src_labels: jax.Array, tgt_images: jax.Array,
                key: jax.Array) -> dict[str, jax.Array]:
    """The ClassMix batch before the strong augmentation: 'images' [B, H, W, 3], 'labels' [B, H, W] int32,
    'weights' [B, H, W] float32, 'masks' [B, H, W] bool (pasted source pixels), 'max_probs' [B, H, W] (teacher)."""
    d = self.config.dacs
    targets, max_probs = pseudo_labels(jax.lax.stop_gradient(self.teacher_logits(teacher, tgt_images)))
    masks = class_mix_masks(key, src_labels, self.config.model.num_classes, d.ignore_is_class)
    pseudo_weights = confidence_weights(max_probs, d.confidence_threshold, d.pixel_weight)
    return {'images': mix(masks, src_images, tgt_images), 'labels': mix(masks, src_labels, targets),
            'weights': mix(masks, jnp.ones_like(pseudo_weights), pseudo_weights), 'masks': masks,
            'max_probs': max_probs}

  def train_step(self, state: DACSState, batch: base.Batch) -> tuple[DACSState, base.Metrics]:
    d = self.config.dacs
    key = jax.random.fold_in(state.key, state.step)
    src_key, mix_key, strong_key = jax.random.split(key, 3)
    src_images, src_labels = self.augment(src_key, base.to_float_images(batch['source']['image']),
                                          base.to_labels(batch['source']['label']))
    tgt_images = base.to_float_images(batch['target']['image'])  # un-augmented, as the teacher sees it
    mixed = self.mix_batch(state.teacher, src_images, src_labels, tgt_images, mix_key)
    mixed_images, mixed_labels = self.strong(strong_key, mixed['images'], mixed['labels'])

    def loss_fn(params):
      src_out, stats = supervised.apply_train(state.seg, params, src_images)
      mix_out, stats = supervised.apply_train(state.seg.replace(batch_stats=stats), params, mixed_images)
      seg_total, parts = self.seg_loss(src_out, src_labels)
      mix_loss = losses.cross_entropy(mix_out['logits'], mixed_labels, mixed['weights'], normalize='all')
      return seg_total + d.consistency_weight * mix_loss, (stats, parts, mix_loss)

    (total, (stats, parts, mix_loss)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.seg.params)
    seg = state.seg.apply_gradients(grads=grads, batch_stats=stats)
    alpha = ema_alpha(state.step, d.ema_alpha)
    teacher = ema_update(state.teacher, seg.variables, alpha)
    metrics = {'loss': total, **parts, 'loss_mix': mix_loss,
               'confident_fraction': jnp.mean((mixed['max_probs'] >= d.confidence_threshold).astype(jnp.float32)),
               'mixed_fraction': jnp.mean(mixed['masks'].astype(jnp.float32)), 'ema_alpha': alpha,
               'lr': self.lr_schedule(state.step)}
    return state.replace(seg=seg, teacher=teacher), metrics

  def warm_start(self, state: DACSState, variables: dict[str, Any]) -> DACSState:
    """Student and teacher both start from the warm-start network (the teacher as a copy, as at init)."""
    state = super().warm_start(state, variables)
    return state.replace(teacher=jax.tree.map(lambda x: jnp.array(x, copy=True), state.seg.variables))

  def eval_variables(self, state: DACSState) -> dict[str, Any]:
    """The student, as DACS evaluates it (`evaluate(model, ...)` in trainUDA.py); the teacher only labels."""
    return state.seg.variables
