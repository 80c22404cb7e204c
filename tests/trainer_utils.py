"""Tiny end-to-end configs for the trainer tests: a few 64x64 images per domain, a handful of steps."""

from __future__ import annotations

import importlib
import json
import os

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from rtda_jax import models
from rtda_jax.models import classes

TINY = (64, 64)
TINY_MODEL = 'tiny_test_seg'


class TinySeg(nn.Module):
  """A two-conv segmentation net with the models' output contract (aux only in train mode, like BiSeNet), so the
  method tests compile in seconds."""
  num_classes: int = 19
  output_ids: tuple[int, ...] | None = None  # model.output_classes, as in the real models

  @nn.compact
  def __call__(self, images, train: bool):
    x = images / 255.0
    x = nn.Conv(8, (3, 3), name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn')(x)
    x = nn.relu(x)
    k = classes.num_outputs(self.num_classes, self.output_ids)
    logits = classes.expand(nn.Conv(k, (1, 1), name='classifier')(x), self.output_ids, self.num_classes)
    aux = classes.expand(nn.Conv(k, (1, 1), name='aux')(x), self.output_ids, self.num_classes)
    return {'logits': logits, 'aux': (aux,) if train else (), 'features': x}


models.register_model(TINY_MODEL, models.ModelSpec(
    build=lambda c: TinySeg(c.num_classes, classes.output_ids(c.get('output_classes'))),
    param_labels=lambda p: jax.tree.map(lambda _: 'backbone', p),
    backbone_path=()))


def random_batch(batch_size: int, shape: tuple[int, int], seed: int = 0,
                 domains: tuple[str, ...] = ('source', 'target')) -> dict:
  """{domain: {'image': uint8 [B, H, W, 3], 'label': uint8 [B, H, W] in 0..18}} numpy arrays from a seeded Generator."""
  rng = np.random.default_rng(seed)
  return {d: {'image': rng.integers(0, 256, (batch_size, *shape, 3), dtype=np.uint8),
              'label': rng.integers(0, 19, (batch_size, *shape), dtype=np.uint8)} for d in domains}


def init_and_step(config, batch: dict, shape: tuple[int, int]):
  """One jitted train step of `config.method` from the state of PRNGKey(0): (method, old, new, metrics) on the host."""
  from rtda_jax import methods
  method = methods.get_method(config)
  state = method.init(jax.random.PRNGKey(0), {'source': shape, 'target': shape})
  old = jax.device_get(state)
  new, metrics = jax.jit(method.train_step)(state, batch)
  return method, old, jax.device_get(new), jax.device_get(metrics)


def steps_on_mesh(config, num_devices: int, batch: dict, shape: tuple[int, int], num_steps: int = 2):
  """`num_steps` jitted, donated train steps of `config.method` on a mesh of `num_devices` (state replicated, batch
  sharded), from the state of PRNGKey(0); returns the final (state, metrics) on the host."""
  from rtda_jax import parallel
  from rtda_jax import methods
  mesh = parallel.make_mesh(num_devices)
  method = methods.get_method(config)
  state = parallel.replicate(method.init(jax.random.PRNGKey(0), {'source': shape, 'target': shape}), mesh)
  rep = parallel.replicated(mesh)
  step = jax.jit(method.train_step, donate_argnums=0, out_shardings=(rep, rep))
  for _ in range(num_steps):
    state, metrics = step(state, parallel.shard_batch(batch, mesh))
  return jax.device_get((state, metrics))


def get_field(config, key: str):
  """The value at a dotted field ('train.augment') of a config; '' is the config itself."""
  for part in filter(None, key.split('.')):
    config = config[part]
  return config


def override(config, overrides: dict):
  """Sets dotted fields ('train.batch_size') of a config; returns it."""
  for key, value in overrides.items():
    parent, _, leaf = key.rpartition('.')
    get_field(config, parent)[leaf] = value
  return config


def tiny_config(data_root: str, config_name: str = 'source_only', preset: str | None = None, **overrides):
  """A config of `configs/<config_name>.py` shrunk to seconds per run on a CPU."""
  config = importlib.import_module(f'configs.{config_name}').get_config(preset)
  d = config.data
  d.root = data_root
  d.synthetic.gta5_size = d.synthetic.cityscapes_size = TINY
  d.synthetic.num_gta5, d.synthetic.num_cityscapes_train, d.synthetic.num_cityscapes_val = 16, 16, 8
  d.gta5_size = d.cityscapes_size = d.source_train_size = d.target_train_size = TINY
  d.num_workers = 0
  d.eval_batch_size = 8
  config.num_devices = 1
  config.train.batch_size = 2
  config.train.num_steps = 6
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 100
  config.eval.every_steps = 1000
  config.eval.num_prediction_images = 2
  config.model.init_from, config.model.init_steps = None, 0  # no demo warm start unless a test asks for one
  return override(config, overrides)


def restore_params(workdir: str) -> dict:
  """The raw saved state of the last checkpoint as a tree of numpy arrays (independent of the method code)."""
  root = os.path.join(workdir, 'checkpoints', 'last')
  step = max(int(s) for s in os.listdir(root) if s.isdigit())
  with ocp.PyTreeCheckpointer() as ckpt:
    return ckpt.restore(os.path.join(root, str(step), 'state'))


def assert_trees_equal(a, b, atol: float = 0.0) -> None:
  import jax
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    if atol:
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0, err_msg=str(path))
    else:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


U32 = 2.0 ** -24  # float32 unit roundoff


def initial_state(config, shape: tuple[int, int]):
  """The state `steps_on_mesh` starts from (PRNGKey(0)), on the host."""
  from rtda_jax import methods
  return jax.device_get(methods.get_method(config).init(jax.random.PRNGKey(0), {'source': shape, 'target': shape}))


DEPTH = 24  # the longest chain of layers between a loss and a parameter in the tests' nets (BiSeNet's ResNet-18 path)


def assert_same_up_to_summation_order(a, b, initial, n: int, num_steps: int = 1, adam_lr: float = 0.0,
                                      depth: int = DEPTH) -> None:
  """Trees `a` and `b` (the same steps run on other device counts) agree to what float32 sums in other orders can
  differ by. XLA sums in other orders on 1 and 8 devices (each device's slice, then an all-reduce) and picks other
  kernels for other batch sizes and CPUs (AVX2 / AVX-512). A float32 sum of n terms, in any order, is within
  n u sum|terms| of the exact sum (u = 2^-24); the longest sums of a step (losses, BatchNorm statistics, weight
  gradients) run over the n pixels of the batch.

  A leaf's update is not one such sum but the end of a chain: the backward pass runs through `depth` layers, each
  adding its own n u relative error to the gradient it passes on (and BatchNorm's backward subtracting means that
  cancel). So each leaf's update (its change since `initial`) is checked as a whole, in the 2-norm:
      ||a - b|| <= num_steps * depth * n u * ||update of a|| + sqrt(size) * (n u * U + 4 u max|a|)
  where U is the largest change of any leaf, the last term covering leaves whose exact gradient is 0 (a conv bias
  before BatchNorm: its update is rounding noise) and the rounding of the updates themselves. An element-wise bound
  of n u U held on one AMD CPU and failed on a Xeon with AVX-512 (session 8): 51 elements of one output channel of
  BiSeNet's first convolution off by 4x that, the whole leaf off by 2.3e-3 = 1.2 n u of its own update (the worst
  leaf: 3.2e-3, 1.6 n u; median 6e-5). A data-parallel bug moves whole leaves: a gradient summed instead of averaged
  over 8 devices changes every update by 700%, a device's slice left out by about 1/8 = 12.5%, against
  depth * n u = 24 * 2^-9 = 4.7% here.

  With `adam_lr` (leaves trained by Adam): Adam's update is lr m/(sqrt(v) + eps), each element's gradient divided by
  its own magnitude, so what bounds the difference is the *relative* rounding error of that element's gradient. For
  a sum that cancels (a bias's gradient over n pixels, sum|terms| >> |sum|) that error has no bound below 1: the two
  normalised updates can be anywhere in [-1.5, 1.5] (|m / sqrt(v)| <= 1.5 for the first steps with betas
  (0.9, 0.99)). So an Adam leaf is checked per element within 2 * 1.5 * lr per step, the only bound that holds on
  every CPU (session 5's "at most 1% of a leaf off" held with XLA's optimised CPU code and failed with
  --xla_backend_optimization_level=0: 18 of 64 biases). This checks only the scale of the updates (a wrong learning
  rate), not the gradients: Adam is invariant to the gradient's scale, so a mean-vs-sum bug cannot show in its leaves
  anyway; the SGD-trained leaves carry that check."""
  la, lb, l0 = (jax.tree_util.tree_leaves_with_path(t) for t in (a, b, initial))
  assert [p for p, _ in la] == [p for p, _ in lb] == [p for p, _ in l0]
  f64 = lambda x: np.asarray(x, np.float64)
  largest = max(float(np.max(np.abs(f64(x) - f64(x0)))) for (_, x), (_, x0) in zip(la, l0))
  for (path, x), (_, y), (_, x0) in zip(la, lb, l0):
    x, y, x0 = f64(x), f64(y), f64(x0)
    name = jax.tree_util.keystr(path)
    per_element = num_steps * n * U32 * largest + 4 * U32 * float(np.max(np.abs(x)))  # sums of n terms, rounding
    if adam_lr:
      np.testing.assert_allclose(x, y, rtol=0, atol=per_element + 3.0 * adam_lr * num_steps, err_msg=name)
      continue
    bound = num_steps * depth * n * U32 * float(np.linalg.norm(x - x0)) + np.sqrt(x.size) * per_element
    diff = float(np.linalg.norm(x - y))
    assert diff <= bound, (f'{name}: ||a - b|| = {diff:.3e} > {bound:.3e} (update norm {np.linalg.norm(x - x0):.3e}, '
                           f'largest change of any leaf {largest:.3e})')


def read_eval(workdir: str) -> dict:
  with open(os.path.join(workdir, 'eval.json')) as f:
    return json.load(f)
