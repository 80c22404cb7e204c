"""The method interface every training method implements, and the pieces they share (states, optimisers).

A method is found by name (`config.method`), names the data domains its step needs (`domains`), builds its state
from a PRNG key (`init`), and offers one pure `train_step(state, batch) -> (state, metrics)` that the trainer jits
with the state donated. Randomness inside the step comes from `fold_in(state.key, state.step)`, so a resumed run
draws exactly the keys the uninterrupted run would have drawn.
"""

from __future__ import annotations

import abc
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from rtda_jax import models

Batch = dict[str, dict[str, jax.Array]]  # {'source': {'image': [B,H,W,3] uint8, 'label': [B,H,W] uint8}, 'target': ...}
Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
  """Parameters, BatchNorm statistics and optax state of one network."""
  batch_stats: Any = None

  @property
  def variables(self) -> dict[str, Any]:
    v = {'params': self.params}
    if self.batch_stats is not None:
      v['batch_stats'] = self.batch_stats
    return v


def poly_schedule(base_lr: float, num_steps: int, power: float = 0.9, warmup_steps: int = 0) -> optax.Schedule:
  """Linear warm-up to `base_lr`, then base_lr * (1 - t / T) ** power over the remaining steps (the poly policy)."""
  decay = optax.polynomial_schedule(base_lr, 0.0, power, max(1, num_steps - warmup_steps))
  if warmup_steps <= 0:
    return decay
  warmup = optax.linear_schedule(base_lr / max(1, warmup_steps), base_lr, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def schedule_horizon(train_cfg: ml_collections.ConfigDict) -> int:
  """T of the poly decay: `train.schedule_steps` (the references decay over T and stop earlier), else num_steps."""
  return int(train_cfg.get('schedule_steps', 0) or train_cfg.num_steps)


def learning_rate_schedule(train_cfg: ml_collections.ConfigDict) -> optax.Schedule:
  """The segmentation net's schedule: warm-up, then poly decay over the horizon."""
  return poly_schedule(train_cfg.learning_rate, schedule_horizon(train_cfg), train_cfg.poly_power,
                       train_cfg.warmup_steps)


def segmentation_optimizer(train_cfg: ml_collections.ConfigDict, param_labels: Any) -> optax.GradientTransformation:
  """SGD (or Adam) with weight decay and poly decay; heads at `head_lr_mult` x the rate; frozen params never move.

  Weight decay is added to the gradient before momentum, as PyTorch's SGD does.
  """
  schedule = learning_rate_schedule(train_cfg)

  def make(mult: float) -> optax.GradientTransformation:
    lr = lambda step: schedule(step) * mult
    if train_cfg.optimizer == 'sgd':
      opt = optax.sgd(lr, momentum=train_cfg.momentum)
    elif train_cfg.optimizer == 'adam':
      opt = optax.adam(lr)
    else:
      raise ValueError(f'config.train.optimizer={train_cfg.optimizer!r}: choose sgd or adam.')
    return optax.chain(optax.add_decayed_weights(train_cfg.weight_decay), opt)

  transforms = {'backbone': make(1.0), 'head': make(train_cfg.head_lr_mult), 'frozen': optax.set_to_zero()}
  return optax.multi_transform(transforms, param_labels)


def create_train_state(module: flax.linen.Module, variables: dict[str, Any],
                       tx: optax.GradientTransformation) -> TrainState:
  return TrainState.create(apply_fn=module.apply, params=variables['params'], tx=tx,
                           batch_stats=variables.get('batch_stats'))


def train_shapes(config: ml_collections.ConfigDict) -> dict[str, tuple[int, int]]:
  """The training [H, W] of each domain, which `Method.init` takes."""
  return {'source': tuple(config.data.source_train_size), 'target': tuple(config.data.target_train_size)}


def to_float_images(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] -> float32 0..255 (models normalise internally)."""
  return images.astype(jnp.float32)


def to_labels(labels: jax.Array) -> jax.Array:
  """uint8 [B, H, W] train ids -> int32."""
  return labels.astype(jnp.int32)


class Method(abc.ABC):
  """A training method: the state it keeps and its pure train step."""

  name: str = ''
  domains: tuple[str, ...] = ('source',)  # which domains' training batches the step needs
  evaluates_segmentation: bool = True  # False (a translator): the trainer skips the target evaluation

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = models.get_model(config.model)

  def init_variables(self, key: jax.Array, image_shape: tuple[int, int]) -> dict[str, Any]:
    """Random (or pretrained) variables of the segmentation model for [1, H, W, 3] inputs."""
    dummy = jnp.zeros((1, *image_shape, 3), jnp.float32)
    return dict(self.model.init(key, dummy, train=False))

  @abc.abstractmethod
  def init(self, key: jax.Array, shapes: dict[str, tuple[int, int]]) -> Any:
    """The full method state from a key; `shapes` maps each domain to its training [H, W]."""

  @abc.abstractmethod
  def train_step(self, state: Any, batch: Batch) -> tuple[Any, Metrics]:
    """One optimisation step. Pure; jitted by the trainer with the state donated."""

  def train_data(self, domain: str) -> tuple[ml_collections.ConfigDict, str]:
    """(data config, dataset name) the trainer reads `domain`'s training batches from. Self-training overrides it
    to read a pseudo-labelled copy of the target."""
    data = self.config.data
    return data, {'source': data.source, 'target': data.target}[domain]

  def eval_variables(self, state: Any) -> dict[str, Any]:
    """The segmentation variables to evaluate (the student by default)."""
    return state.seg.variables

  def warm_start(self, state: Any, variables: dict[str, Any]) -> Any:
    """The state with the segmentation net's params and BatchNorm statistics replaced by `variables` (a warm start:
    optimiser state and step unchanged). Methods with other copies of the net (a teacher) override it."""
    seg = state.seg.replace(params=variables['params'], batch_stats=variables.get('batch_stats'))
    return state.replace(seg=seg)

  def predict_logits(self, variables: dict[str, Any], images: jax.Array) -> jax.Array:
    """float32 logits [B, H, W, C] of the model in eval mode."""
    return self.model.apply(variables, to_float_images(images), train=False)['logits']


_REGISTRY: dict[str, Callable[[ml_collections.ConfigDict], Method]] = {}  # filled by `register`; read by
# `rtda_jax.methods.get_method`, which imports the method modules (base imports none of them)


def register(name: str):
  def deco(cls):
    cls.name = name
    _REGISTRY[name] = cls
    return cls
  return deco
