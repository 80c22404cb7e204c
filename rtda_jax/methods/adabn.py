"""AdaBN (Li et al., 2016): re-estimate every BatchNorm's statistics on unlabelled target images; no gradient.

The control of the results table: any method that forwards target batches in train mode gets this effect for free.
Each "step" forwards one target training batch in train mode (every BatchNorm normalises with that batch's own
statistics, as during adaptation) and adds, per BatchNorm layer and channel, the batch mean of its input and the batch
mean of its square. The evaluated model is the warm-start model with, in every BatchNorm,

  mean = average over the batches of the batch means,   var = average of the batch E[x^2] - mean^2,

i.e. the population statistics of the target images over all the batches seen (the batches are of equal size), not
a running average. Parameters are never changed. Run it for about one epoch of the target training split
(`configs/adabn.py` sets the steps); it needs a trained model (`model.init_from`). With `model.bn_mode='frozen'`
the train-mode forward pass normalises with the running statistics, so the moments of deeper layers are taken on
activations normalised with the source statistics: use 'train' or 'batch' (the defaults) for AdaBN proper.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rtda_jax.methods import base, supervised


@flax.struct.dataclass
class AdaBNState:
  seg: base.TrainState  # the warm-start params (never changed) with the target statistics estimated so far
  source_stats: Any  # the warm-start model's own BatchNorm statistics (for the bn_mean_shift diagnostic)
  sums: Any  # like seg.batch_stats: {'mean': sum of batch means, 'var': sum of batch means of x^2} per layer
  count: jax.Array  # float32: batches accumulated
  key: jax.Array

  @property
  def step(self) -> jax.Array:
    return self.seg.step


def batch_norm_moments(apply_fn, variables: dict[str, Any], images: jax.Array) -> dict[tuple[str, ...], tuple]:
  """{module path: (E[x], E[x^2]) float32 [C]} of the input x of every BatchNorm layer, forward in train mode.

  A BatchNorm layer is any module whose path holds 'mean' and 'var' in `variables['batch_stats']` (flax's
  nn.BatchNorm or the project's own), found by intercepting its `__call__`.
  """
  stats_paths = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(variables['batch_stats'])[0]:
    keys = tuple(p.key for p in path)
    if keys[-1] == 'mean':
      stats_paths.add(keys[:-1])
  moments: dict[tuple[str, ...], tuple] = {}

  def interceptor(next_fun, args, kwargs, context):
    path = tuple(context.module.path)
    if context.method_name == '__call__' and path in stats_paths and path not in moments:
      x = jnp.asarray(args[0]).astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      moments[path] = (jnp.mean(x, axis=axes), jnp.mean(jnp.square(x), axis=axes))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    apply_fn(variables, images, train=True, mutable=['batch_stats'])
  missing = stats_paths - set(moments)
  if missing:
    raise ValueError(f'AdaBN found no call of the BatchNorm layers {sorted(missing)[:3]}... in train mode.')
  return moments


def _tree_from_moments(like: Any, moments: dict[tuple[str, ...], tuple]) -> Any:
  """A tree like batch_stats with 'mean' <- E[x] and 'var' <- E[x^2] of `moments`."""
  def leaf(path, _):
    keys = tuple(p.key for p in path)
    first, second = moments[keys[:-1]]
    return first if keys[-1] == 'mean' else second
  return jax.tree_util.tree_map_with_path(leaf, like)


def population_statistics(sums: Any, count: jax.Array) -> Any:
  """batch_stats from accumulated sums: mean = sum_mean / n, var = sum_sq / n - mean^2 (clipped at 0)."""
  def per_layer(layer):
    if isinstance(layer, dict) and set(layer) == {'mean', 'var'}:
      mean = layer['mean'] / count
      return {'mean': mean, 'var': jnp.maximum(layer['var'] / count - jnp.square(mean), 0.0)}
    return {k: per_layer(v) for k, v in layer.items()}
  return per_layer(sums)


@base.register('adabn')
class AdaBN(base.Method):
  domains = ('target',)

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    if not config.model.get('init_from') and not config.model.get('pretrained'):
      raise ValueError('AdaBN re-estimates the BatchNorm statistics of a trained model: set '
                       '--config.model.init_from=WORKDIR (e.g. a source-only run).')

  def init(self, key: jax.Array, shapes: dict[str, tuple[int, int]]) -> AdaBNState:
    init_key, step_key = jax.random.split(key)
    seg = supervised.init_segmentation_state(self, init_key, shapes['source'])
    if seg.batch_stats is None:
      raise ValueError(f'Model {self.config.model.name!r} has no BatchNorm statistics to adapt.')
    sums = jax.tree.map(jnp.zeros_like, seg.batch_stats)
    return AdaBNState(seg=seg, source_stats=seg.batch_stats, sums=sums, count=jnp.zeros((), jnp.float32),
                      key=step_key)

  def warm_start(self, state: AdaBNState, variables: dict[str, Any]) -> AdaBNState:
    state = super().warm_start(state, variables)
    return state.replace(source_stats=state.seg.batch_stats)

  def train_step(self, state: AdaBNState, batch: base.Batch) -> tuple[AdaBNState, base.Metrics]:
    images = base.to_float_images(batch['target']['image'])  # labels are never read
    moments = batch_norm_moments(state.seg.apply_fn, state.seg.variables, images)
    batch_tree = _tree_from_moments(state.seg.batch_stats, moments)
    sums = jax.tree.map(jnp.add, state.sums, batch_tree)
    count = state.count + 1.0
    # How far this batch's means are from the source model's running means (a diagnostic, averaged over layers).
    shifts = [jnp.mean(jnp.abs(m - r)) for m, r in zip(
        jax.tree.leaves(_select(batch_tree, 'mean')), jax.tree.leaves(_select(state.source_stats, 'mean')))]
    metrics = {'bn_mean_shift': jnp.mean(jnp.stack(shifts))}
    # The network's statistics are the population estimate so far, so the saved `seg` is the adapted model (what
    # evaluation, --mode=evaluate and a later model.init_from read).
    seg = state.seg.replace(step=state.seg.step + 1, batch_stats=population_statistics(sums, count))
    return state.replace(seg=seg, sums=sums, count=count), metrics


def _select(tree: Any, name: str) -> Any:
  """The leaves called `name` ('mean' or 'var') of a batch_stats tree."""
  return jax.tree_util.tree_map_with_path(lambda p, x: x if p[-1].key == name else None, tree)
