"""Supervised training on labelled source images: the Cityscapes oracle and GTA5 source-only runs.

Loss = segmentation loss on the main logits + `train.aux_weight` x the loss on each auxiliary output (BiSeNet's two
context heads; DeepLab-v2's layer3 classifier when multi-level).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from rtda_jax import augment, losses, models
from rtda_jax.methods import base


@flax.struct.dataclass
class SupervisedState:
  seg: base.TrainState
  key: jax.Array  # root key of the step randomness; the step's key is fold_in(key, step)

  @property
  def step(self) -> jax.Array:
    return self.seg.step


def init_segmentation_state(method: base.Method, key: jax.Array, image_shape: tuple[int, int]) -> base.TrainState:
  """Variables (random, or pretrained when config.model.pretrained names a file) and the segmentation optimiser."""
  variables = jax.jit(method.init_variables, static_argnums=1)(key, tuple(image_shape))
  if method.config.model.pretrained:
    from rtda_jax.models import pretrained
    variables = pretrained.load_pretrained(method.config.model, variables)
  tx = base.segmentation_optimizer(method.config.train, models.param_labels(method.config.model, variables['params']))
  return base.create_train_state(method.model, variables, tx)


def segmentation_loss_fn(method: base.Method):
  """(outputs, labels) -> (total loss, parts): main loss + aux_weight x each auxiliary loss, all float32."""
  loss = losses.get_segmentation_loss(method.config.train.loss)
  aux_weight = method.config.train.aux_weight

  def fn(outputs: dict[str, Any], labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    main = loss(outputs['logits'], labels)
    aux = sum((loss(a, labels) for a in outputs['aux']), jnp.zeros((), jnp.float32))
    return main + aux_weight * aux, {'loss_seg': main, 'loss_aux': aux}

  return fn


def apply_train(state: base.TrainState, params: Any, images: jax.Array) -> tuple[dict[str, Any], Any]:
  """Forward pass in train mode; returns the outputs and the updated BatchNorm statistics."""
  outputs, mutated = state.apply_fn({'params': params, 'batch_stats': state.batch_stats}, images, train=True,
                                    mutable=['batch_stats'])
  return outputs, mutated['batch_stats']


@base.register('supervised')
class Supervised(base.Method):
  domains = ('source',)

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.augment = augment.batched(augment.build(config.train.augment))
    self.seg_loss = segmentation_loss_fn(self)
    self.lr_schedule = base.learning_rate_schedule(config.train)

  def init(self, key: jax.Array, shapes: dict[str, tuple[int, int]]) -> SupervisedState:
    init_key, step_key = jax.random.split(key)
    return SupervisedState(seg=init_segmentation_state(self, init_key, shapes['source']), key=step_key)

  def train_step(self, state: SupervisedState, batch: base.Batch) -> tuple[SupervisedState, base.Metrics]:
    key = jax.random.fold_in(state.key, state.step)
    images, labels = self.augment(key, base.to_float_images(batch['source']['image']),
                                  base.to_labels(batch['source']['label']))

    def loss_fn(params):
      outputs, batch_stats = apply_train(state.seg, params, images)
      total, parts = self.seg_loss(outputs, labels)
      return total, (batch_stats, parts)

    (total, (batch_stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.seg.params)
    seg = state.seg.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {'loss': total, **parts, 'lr': self.lr_schedule(state.step)}
    return state.replace(seg=seg), metrics
