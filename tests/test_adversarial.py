"""Adversarial adaptation: two optimiser states that never leak into each other, the adversarial gradient through a
frozen discriminator against a hand-built computation, the sign of the adversarial loss, 1 vs 8 devices, exact resume."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import adv as adv_config
from rtda_jax import app, methods, models
from rtda_jax.methods import base
from tests.trainer_utils import (TINY_MODEL, U32, TinySeg, assert_same_up_to_summation_order, assert_trees_equal,
                                 init_and_step, initial_state, override, random_batch, read_eval, restore_params,
                                 steps_on_mesh, tiny_config)

SHAPE = (64, 64)




def make_config(**overrides):
  config = adv_config.get_config()
  config.model.name = TINY_MODEL
  config.train.batch_size = 2
  config.train.weight_decay = 1e-3
  config.adv.lambda_adv = 0.5  # large, so the adversarial gradient is a visible part of the update
  return override(config, overrides)


def make_batch(batch_size=2, seed=0):
  return jax.tree.map(jnp.asarray, random_batch(batch_size, SHAPE, seed))


init_and_step = functools.partial(init_and_step, shape=SHAPE)


def test_discriminator_is_untouched_by_the_segmentation_update():
  _, old, new, _ = init_and_step(make_config(**{'adv.disc_learning_rate': 0.0}), make_batch())
  assert_trees_equal(old.discs[0].params, new.discs[0].params)
  assert not np.array_equal(old.seg.params['classifier']['kernel'], new.seg.params['classifier']['kernel'])


def test_segmentation_net_is_untouched_by_the_discriminator_update():
  _, old, new, _ = init_and_step(make_config(**{'train.learning_rate': 0.0}), make_batch())
  assert_trees_equal(old.seg.params, new.seg.params)
  assert not np.array_equal(old.discs[0].params['classifier']['kernel'], new.discs[0].params['classifier']['kernel'])


def test_segmentation_update_is_the_gradient_through_the_frozen_discriminator():
  config = make_config()
  batch = make_batch()
  method, old, new, _ = init_and_step(config, batch)
  model, disc = TinySeg(19), models.get_discriminator('fc', 19)
  xs, ys = batch['source']['image'].astype(jnp.float32), batch['source']['label'].astype(jnp.int32)
  xt = batch['target']['image'].astype(jnp.float32)
  lam, wd, lr = config.adv.lambda_adv, config.train.weight_decay, config.train.learning_rate

  def total(params):  # written out by hand: CE(source) + aux CE + lambda * BCE(D(softmax(target)), source=0)
    out_s, mut = model.apply({'params': params, 'batch_stats': old.seg.batch_stats}, xs, train=True,
                             mutable=['batch_stats'])
    out_t, _ = model.apply({'params': params, 'batch_stats': mut['batch_stats']}, xt, train=True,
                           mutable=['batch_stats'])
    ce = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()
    d = disc.apply({'params': old.discs[0].params}, jax.nn.softmax(out_t['logits'], -1))
    return ce(out_s['logits']) + ce(out_s['aux'][0]) + lam * jnp.mean(jax.nn.softplus(d))

  grads = jax.grad(total)(old.seg.params)
  # First SGD step with momentum: p - lr * (g + wd * p).
  expected = jax.tree.map(lambda p, g: p - lr * (g + wd * p), old.seg.params, grads)
  assert_trees_equal(expected, new.seg.params, atol=1e-6)

  # ... and the adversarial part is not negligible in that update.
  no_adv = make_config(**{'adv.lambda_adv': 0.0})
  _, _, new_no_adv, _ = init_and_step(no_adv, batch)
  diff = np.abs(new.seg.params['classifier']['kernel'] - new_no_adv.seg.params['classifier']['kernel']).max()
  assert diff > 1e-6, diff


def test_discriminator_update_uses_detached_predictions_with_source_0_target_1():
  config = make_config()
  batch = make_batch()
  _, old, new, metrics = init_and_step(config, batch)
  model, disc = TinySeg(19), models.get_discriminator('fc', 19)
  out_s, mut = model.apply(old.seg.variables, batch['source']['image'].astype(jnp.float32), train=True,
                           mutable=['batch_stats'])
  out_t, _ = model.apply({'params': old.seg.params, **mut}, batch['target']['image'].astype(jnp.float32), train=True,
                         mutable=['batch_stats'])
  p_s, p_t = jax.nn.softmax(out_s['logits'], -1), jax.nn.softmax(out_t['logits'], -1)

  def d_loss(params):
    bce = lambda x, t: optax.sigmoid_binary_cross_entropy(x, jnp.full_like(x, t)).mean()
    return 0.5 * (bce(disc.apply({'params': params}, p_s), 0.0) + bce(disc.apply({'params': params}, p_t), 1.0))

  loss, grads = jax.value_and_grad(d_loss)(old.discs[0].params)
  np.testing.assert_allclose(metrics['loss_disc0'], loss, rtol=1e-5)
  tx = optax.adam(config.adv.disc_learning_rate, b1=0.9, b2=0.99)
  updates, _ = tx.update(grads, tx.init(old.discs[0].params))
  expected = optax.apply_updates(old.discs[0].params, updates)
  lr = config.adv.disc_learning_rate
  for g, e, n in zip(*(jax.tree.leaves(t) for t in (grads, expected, new.discs[0].params))):
    # Adam's first step is lr * g / (|g| + eps): exact where |g| >> eps, rounding-sensitive where |g| ~ eps.
    clear = np.abs(g) > 1e-6
    np.testing.assert_allclose(n[clear], e[clear], atol=1e-3 * lr, rtol=0)
    np.testing.assert_allclose(n, e, atol=0.05 * lr, rtol=0)


@pytest.mark.parametrize('bias, small', [(-10.0, True), (10.0, False)])
def test_adversarial_loss_is_small_when_the_discriminator_already_says_source(bias, small):
  config = make_config()
  method = methods.get_method(config)
  state = method.init(jax.random.PRNGKey(0), {'source': SHAPE, 'target': SHAPE})
  p = jax.tree.map(jnp.zeros_like, state.discs[0].params)
  p['classifier']['bias'] = jnp.full_like(p['classifier']['bias'], bias)  # D(x) = bias everywhere
  state = state.replace(discs=(state.discs[0].replace(params=p),))
  _, metrics = jax.jit(method.train_step)(state, make_batch())
  per_lambda = float(metrics['loss_adv']) / config.adv.lambda_adv
  if small:
    assert per_lambda < 1e-3  # log(1 + e^-10)
  else:
    assert per_lambda == pytest.approx(10.0, rel=1e-3)


@pytest.mark.parametrize('preset, levels', [('', ['logits']), ('multilevel', ['logits', 'aux0', 'aux1']),
                                            ('feature', ['features']), ('deeplabv2,multilevel', ['logits', 'aux0'])])
def test_presets_choose_the_adapted_levels(preset, levels):
  from rtda_jax.methods import adversarial
  assert [l for l, _ in adversarial.adapted_levels(adv_config.get_config(preset))] == levels


def test_feature_level_and_light_discriminator_run():
  config = make_config(**{'adv.level': 'feature', 'adv.discriminator': 'light'})
  _, old, new, metrics = init_and_step(config, make_batch())
  # 8 feature channels in; features get the size-preserving 3x3 stride-1 discriminator.
  assert old.discs[0].params['conv1']['depthwise']['kernel'].shape == (3, 3, 1, 8)
  assert np.isfinite(metrics['loss']) and np.isfinite(metrics['loss_disc0'])


def test_warmup_switches_the_adversarial_term_on_later():
  _, _, _, metrics = init_and_step(make_config(**{'adv.warmup_steps': 5}), make_batch())
  assert float(metrics['loss_adv']) == 0.0


def test_one_and_eight_devices_give_the_same_adversarial_step():
  config = make_config(**{'train.batch_size': 8})
  batch = jax.device_get(make_batch(8))
  (state1, m1), (state8, m8) = (steps_on_mesh(config, n, batch, SHAPE) for n in (1, 8))
  n = 8 * SHAPE[0] * SHAPE[1]  # the longest float32 sums run over the batch's pixels (trainer_utils: the bound)
  np.testing.assert_allclose(m1['loss'], m8['loss'], rtol=n * U32)
  initial = initial_state(config, SHAPE)
  assert_same_up_to_summation_order(state1.seg.params, state8.seg.params, initial.seg.params, n, num_steps=2)
  assert_same_up_to_summation_order(state1.discs[0].params, state8.discs[0].params, initial.discs[0].params, n,
                                    num_steps=2, adam_lr=config.adv.disc_learning_rate)


def test_adversarial_run_resumes_bit_for_bit(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('data'))
  straight, resumed = str(tmp_path_factory.mktemp('straight')), str(tmp_path_factory.mktemp('resumed'))
  tiny = {'model.name': TINY_MODEL}  # the trainer's resume logic is model-independent; compile a small net
  app.run(tiny_config(root, 'adv', **tiny), workdir=straight)
  app.run(tiny_config(root, 'adv', **tiny, **{'train.stop_after_steps': 3}), workdir=resumed)
  app.run(tiny_config(root, 'adv', **tiny), workdir=resumed)
  a, b = restore_params(straight), restore_params(resumed)
  assert set(a) == {'seg', 'discs', 'key'}
  assert_trees_equal(a, b)
  assert read_eval(straight) == read_eval(resumed)
  assert os.path.exists(os.path.join(straight, 'checkpoints', 'best'))


def test_discriminator_accuracy_counts_cells_on_the_right_side():
  from rtda_jax.methods import adversarial
  src = jnp.array([[-1.0, 2.0], [-0.5, -3.0]])  # 3 of 4 source cells below 0: right
  tgt = jnp.array([[1.0, -2.0], [0.5, 0.0]])  # 3 of 4 target cells at or above 0: right
  assert float(adversarial.discriminator_accuracy(src, tgt, 'bce')) == 6 / 8
  # Least squares: the boundary is halfway between the labels 0 and 1.
  assert float(adversarial.discriminator_accuracy(jnp.array([0.2, 0.7]), jnp.array([0.6, 0.4]), 'ls')) == 2 / 4
