"""rtda_jax.models.norm.BatchNorm: PyTorch's BatchNorm2d arithmetic (NumPy re-statement, torch when installed),
float32 statistics for bfloat16 inputs, global statistics under the 8-device mesh."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtda_jax import parallel
from rtda_jax.models import norm

U32 = 2.0 ** -24  # float32 unit roundoff


def torch_reference(x, scale, bias, running_mean, running_var, train: bool, momentum: float = 0.1,
                    eps: float = 1e-5):
  """torch.nn.BatchNorm2d's documented forward, restated in float64 NumPy on NHWC: (y, new mean, new var).

  Training: normalise with the batch mean and the biased variance; running = (1 - momentum) * running + momentum *
  batch statistic, with the UNBIASED variance (n / (n - 1)). Eval: normalise with the running statistics.
  """
  x = np.asarray(x, np.float64)
  axes = tuple(range(x.ndim - 1))
  if not train:
    mean, var = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
    new_mean, new_var = running_mean, running_var
  else:
    n = x.size // x.shape[-1]
    mean = x.mean(axes)
    var = ((x - mean) ** 2).mean(axes)
    new_mean = (1 - momentum) * running_mean + momentum * mean
    new_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)
  y = (x - mean) / np.sqrt(var + eps) * scale + bias
  return y, np.asarray(new_mean), np.asarray(new_var)


def float32_tolerances(x, scale, bias, y):
  """Per-channel bounds [C] on |float32 - exact| of the batch mean, the batch variance and the output.

  A float32 sum of n terms errs by at most n u sum|terms| (u = 2^-24, any summation order), so the mean by
  dm = n u max|x|. The variance is mean((x - m')^2) with m' = m + dm: that is var + dm^2 (the first-order term
  vanishes, mean(x - m) = 0), and the subtraction, square and sum add (n + 3) u max|x - m|^2. The output
  y = (x - m) s / sqrt(v + eps) + b then errs by |s| / sigma (dm + max|x - m| dv / (2 sigma^2)) plus a few roundings
  of its terms (subtract, multiply, rsqrt, add: 8 u (max|y - b| + |b|)). The running statistics 0.9 a + 0.1 b err by
  less than these plus 4 u of their value.
  """
  x = np.asarray(x, np.float64)
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  centred = np.abs(x - x.mean(axes)).max(axes)
  sigma = np.sqrt(x.var(axes))
  dm = n * U32 * np.abs(x).max(axes)
  dv = (n + 3) * U32 * centred ** 2 + dm ** 2
  roundings = 8 * U32 * (np.abs(y - bias).max(axes) + np.abs(bias))
  dy = np.abs(scale) / sigma * (dm + centred * dv / (2 * sigma ** 2)) + roundings
  return dm, dv, dy


def assert_within(actual, expected, atol, rtol=0.0):
  """|actual - expected| <= atol + rtol |expected| elementwise; atol broadcasts (per channel on the last axis)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  excess = np.abs(actual - expected) - (atol + rtol * np.abs(expected))
  assert np.all(excess <= 0), f'max excess {excess.max():.3g} over the bound'


def case(shape=(2, 4, 6, 4), seed: int = 0):
  """x [B, H, W, C] with per-channel offsets and spreads, and random affine / running statistics [C]."""
  rng = np.random.default_rng(seed)
  c = shape[-1]
  x = (rng.normal(size=shape) * rng.uniform(0.5, 2.0, c) + rng.uniform(-3, 3, c)).astype(np.float32)
  scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
  bias = rng.normal(0, 0.5, c).astype(np.float32)
  mean = rng.normal(0, 0.5, c).astype(np.float32)
  var = rng.uniform(0.5, 2.0, c).astype(np.float32)
  return x, {'params': {'scale': scale, 'bias': bias}, 'batch_stats': {'mean': mean, 'var': var}}


def apply(variables, x, train: bool, dtype=None):
  """(y, new batch_stats) of norm.BatchNorm in training (`train`) or eval."""
  bn = norm.BatchNorm(dtype=dtype)
  y, updates = jax.jit(lambda v, x: bn.apply(v, x, use_running_average=not train, mutable=['batch_stats']))(
      variables, x)
  return y, jax.tree.map(np.asarray, updates['batch_stats'])


def test_variables_have_flax_names_and_shapes():
  variables = norm.BatchNorm().init(jax.random.PRNGKey(0), jnp.zeros((2, 3, 3, 5)), use_running_average=False)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), variables) == {
      'params': {'scale': ((5,), jnp.float32), 'bias': ((5,), jnp.float32)},
      'batch_stats': {'mean': ((5,), jnp.float32), 'var': ((5,), jnp.float32)}}
  np.testing.assert_array_equal(variables['params']['scale'], 1.0)
  np.testing.assert_array_equal(variables['params']['bias'], 0.0)
  np.testing.assert_array_equal(variables['batch_stats']['mean'], 0.0)
  np.testing.assert_array_equal(variables['batch_stats']['var'], 1.0)


def test_train_mode_matches_pytorch_formulas():
  x, variables = case()
  p, s = variables['params'], variables['batch_stats']
  y_ref, mean_ref, var_ref = torch_reference(x, p['scale'], p['bias'], s['mean'], s['var'], train=True)
  y, stats = apply(variables, x, train=True)
  dm, dv, dy = float32_tolerances(x, p['scale'], p['bias'], y_ref)
  assert_within(y, y_ref, dy)
  assert_within(stats['mean'], mean_ref, dm, 4 * U32)
  assert_within(stats['var'], var_ref, dv, 4 * U32)
  # What this tells apart: flax's update with the biased variance is 0.1 var / (n - 1) lower, far above the bound.
  n = x.size // x.shape[-1]
  biased = x.astype(np.float64).var((0, 1, 2))
  assert np.all(0.1 * biased / (n - 1) > 10 * (dv + 4 * U32 * var_ref))


def test_eval_mode_uses_the_running_statistics_and_changes_nothing():
  x, variables = case(seed=1)
  p, s = variables['params'], variables['batch_stats']
  y_ref, _, _ = torch_reference(x, p['scale'], p['bias'], s['mean'], s['var'], train=False)
  y, stats = apply(variables, x, train=False)
  # No reduction: a few roundings (subtract, rsqrt, multiply, add) of each output's terms.
  assert_within(y, y_ref, 8 * U32 * (np.abs(y_ref - p['bias']) + np.abs(p['bias'])))
  for k in ('mean', 'var'):
    np.testing.assert_array_equal(stats[k], s[k])


def test_bfloat16_inputs_get_float32_statistics():
  x, variables = case(seed=2)
  x16 = jnp.asarray(x, jnp.bfloat16)  # the values a bfloat16 network would carry
  x32 = np.asarray(x16.astype(jnp.float32))  # the same values, exactly, in float32
  y16, s16 = apply(variables, x16, train=True, dtype=jnp.bfloat16)
  y32, s32 = apply(variables, x32, train=True)
  assert y16.dtype == jnp.bfloat16
  # The same values reduced in float32 both times: each within the float32 bound of the exact statistics.
  dm, dv, dy = float32_tolerances(x32, variables['params']['scale'], variables['params']['bias'], np.asarray(y32))
  assert_within(s16['mean'], s32['mean'], 2 * dm, 8 * U32)
  assert_within(s16['var'], s32['var'], 2 * dv, 8 * U32)
  # Reduced in bfloat16 (8-bit mantissa) the variance would err by 2^-9 of itself or more, 10x the bound here.
  assert np.all(2.0 ** -9 * s32['var'] > 10 * (2 * dv + 8 * U32 * s32['var']))
  # The output is the float32 one rounded to bfloat16: within half a bfloat16 ulp (<= 2^-8 |y|) plus the bound.
  assert_within(y16.astype(jnp.float32), y32, 2 * dy, 2.0 ** -8)


def test_training_with_one_value_per_channel_is_an_error():
  _, variables = case(shape=(1, 1, 1, 4))
  with pytest.raises(ValueError, match='more than 1 value per channel'):
    apply(variables, np.ones((1, 1, 1, 4), np.float32), train=True)


def test_statistics_on_an_8_device_mesh_are_global():
  """Sharded over 8 devices (one example each, each from another distribution), BatchNorm normalises with and
  records the statistics of the whole batch, as on one device: synchronised BN."""
  mesh = parallel.make_mesh(8)
  rng = np.random.default_rng(3)
  x = (rng.normal(size=(8, 4, 4, 3)) + np.arange(8)[:, None, None, None]).astype(np.float32)  # device i: mean i
  _, variables = case(shape=x.shape, seed=3)
  p, s = variables['params'], variables['batch_stats']
  bn = norm.BatchNorm()
  fn = lambda v, x: bn.apply(v, x, use_running_average=False, mutable=['batch_stats'])
  y1, s1 = jax.jit(fn)(variables, x)
  sharded = parallel.shard_batch(x, mesh)
  assert len(sharded.sharding.device_set) == 8
  y8, s8 = jax.jit(fn, out_shardings=parallel.replicated(mesh))(parallel.replicate(variables, mesh), sharded)
  y_ref, mean_ref, var_ref = torch_reference(x, p['scale'], p['bias'], s['mean'], s['var'], train=True)
  dm, dv, dy = float32_tolerances(x, p['scale'], p['bias'], y_ref)
  # Both within the float32 bounds of the exact global values (summation orders differ).
  for y, stats in ((y1, s1['batch_stats']), (y8, s8['batch_stats'])):
    assert_within(y, y_ref, dy)
    assert_within(stats['mean'], mean_ref, dm, 4 * U32)
    assert_within(stats['var'], var_ref, dv, 4 * U32)
  # What this tells apart: per-device statistics (each device's unbiased variance, ~1, averaged) against the
  # global one (~6: the devices' means differ).
  local = np.mean(x.astype(np.float64).var(axis=(1, 2)) * 16 / 15, axis=0)
  assert np.all(0.1 * np.abs(local - x.astype(np.float64).var(axis=(0, 1, 2)) * 128 / 127) > 1000 * dv)


def test_matches_torch_batchnorm2d():
  try:
    import torch
  except ImportError:
    pytest.skip('PyTorch is not installed')
  x, variables = case(seed=4)
  p = variables['params']
  bn = torch.nn.BatchNorm2d(x.shape[-1], eps=1e-5, momentum=0.1)
  with torch.no_grad():
    bn.weight.copy_(torch.from_numpy(p['scale']))
    bn.bias.copy_(torch.from_numpy(p['bias']))
    bn.running_mean.copy_(torch.from_numpy(variables['batch_stats']['mean']))
    bn.running_var.copy_(torch.from_numpy(variables['batch_stats']['var']))
  nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  s = variables['batch_stats']
  y_ref, _, _ = torch_reference(x, p['scale'], p['bias'], s['mean'], s['var'], train=True)
  dm, dv, dy = float32_tolerances(x, p['scale'], p['bias'], y_ref)
  for train in (True, False):  # training first: eval then uses the updated running statistics in both
    bn.train(train)
    with torch.no_grad():
      theirs = bn(nchw).numpy().transpose(0, 2, 3, 1)
    ours, stats = apply(variables, x, train=train)
    variables = {'params': p, 'batch_stats': stats}
    # Both float32 computations within the bounds of the exact values, so within twice them of each other.
    assert_within(ours, theirs, 2 * dy)
    assert_within(stats['mean'], bn.running_mean.numpy(), 2 * dm, 8 * U32)
    assert_within(stats['var'], bn.running_var.numpy(), 2 * dv, 8 * U32)


@pytest.mark.parametrize('mode, train, expected', [('train', True, False), ('batch', True, False),
                                                   ('frozen', True, True), ('train', False, True),
                                                   ('batch', False, True), ('frozen', False, True)])
def test_modes_choose_the_statistics(mode, train, expected):
  assert norm.uses_running_average(train, mode) is expected
  assert norm.affine_frozen(mode) is (mode != 'train')


def test_unknown_mode_names_the_field():
  with pytest.raises(ValueError, match=r"model.bn_mode='sync'.*'train', 'batch', 'frozen'"):
    norm.check_bn_mode('sync')
