"""DACS: ClassMix masks and mixing, confidence weights, the mean teacher (EMA, no gradient), the student's loss
against a hand-built computation, presets, 1 vs 8 devices, exact resume."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import dacs as dacs_config
from rtda_jax import app, methods
from rtda_jax.methods import base, dacs
from tests.trainer_utils import (TINY_MODEL, U32, TinySeg, assert_same_up_to_summation_order, assert_trees_equal,
                                 initial_state, override, read_eval, restore_params, steps_on_mesh, tiny_config)

SHAPE = (32, 32)
C = 19




def make_config(**overrides):
  config = dacs_config.get_config()
  config.model.name = TINY_MODEL
  config.train.batch_size = 2
  config.train.weight_decay = 1e-3
  config.dacs.augment = 'none'  # the strong preset's compile is slow; its wiring is tested with a cheap op
  config.dacs.confidence_threshold = 0.07  # the random tiny net's max probabilities straddle it
  return override(config, overrides)


def random_labels(rng, batch_size, num_present=None):
  """[B, H, W] uint8 labels: blocks of a few classes (and some ignore pixels), like a segmentation map."""
  labels = np.empty((batch_size, *SHAPE), np.uint8)
  for b in range(batch_size):
    k = num_present or rng.integers(1, 9)
    classes = rng.choice(np.r_[np.arange(C), 255], k, replace=False)
    blocks = rng.integers(0, k, (SHAPE[0] // 4, SHAPE[1] // 4))
    labels[b] = np.kron(classes[blocks], np.ones((4, 4), np.int64))
  return labels


def make_batch(batch_size=2, seed=0):
  rng = np.random.default_rng(seed)
  return {'source': {'image': jnp.asarray(rng.integers(0, 256, (batch_size, *SHAPE, 3), dtype=np.uint8)),
                     'label': jnp.asarray(random_labels(rng, batch_size))},
          'target': {'image': jnp.asarray(rng.integers(0, 256, (batch_size, *SHAPE, 3), dtype=np.uint8)),
                     'label': jnp.asarray(rng.integers(0, 19, (batch_size, *SHAPE), dtype=np.uint8))}}


def init(config):
  method = methods.get_method(config)
  return method, method.init(jax.random.PRNGKey(0), {'source': SHAPE, 'target': SHAPE})


# ---- ClassMix -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('ignore_is_class', [True, False])
def test_classmix_chooses_half_of_the_present_classes_rounded_up(ignore_is_class):
  labels = jnp.asarray(random_labels(np.random.default_rng(1), 64))
  keys = jax.random.split(jax.random.PRNGKey(3), 64)
  chosen, present = jax.jit(jax.vmap(lambda k, l: dacs.choose_classes(k, l, C, ignore_is_class)))(keys, labels)
  chosen, present = np.asarray(chosen), np.asarray(present)
  counts = set()
  for label, ch, pr in zip(np.asarray(labels), chosen, present):
    values = set(np.unique(label).tolist())
    if not ignore_is_class:
      values.discard(255)
    slots = {C if v == 255 else v for v in values}
    assert set(np.flatnonzero(pr)) == slots
    assert set(np.flatnonzero(ch)) <= slots
    n = len(slots)
    assert ch.sum() == (n + n % 2) // 2  # DACS: int((nclasses + nclasses % 2) / 2)
    counts.add(n)
  assert {1, 2, 7, 8} <= counts  # odd and even numbers of classes were exercised


def test_classmix_mask_covers_exactly_the_chosen_classes():
  labels = jnp.asarray(random_labels(np.random.default_rng(2), 16))
  key = jax.random.PRNGKey(5)
  masks = np.asarray(dacs.class_mix_masks(key, labels, C))
  keys = jax.random.split(key, 16)  # one per image, as class_mix_masks splits them
  chosen = np.asarray(jax.vmap(lambda k, l: dacs.choose_classes(k, l, C)[0])(keys, labels))
  for chosen, label, mask in zip(chosen, np.asarray(labels), masks):
    chosen_values = [c if c < C else 255 for c in np.flatnonzero(chosen)]
    np.testing.assert_array_equal(mask, np.isin(label, chosen_values))
    assert 0 < mask.sum()


def test_classmix_choice_is_random_over_the_present_classes():
  label = jnp.asarray(random_labels(np.random.default_rng(3), 1, num_present=6)[0])
  keys = jax.random.split(jax.random.PRNGKey(0), 200)
  chosen = np.asarray(jax.vmap(lambda k: dacs.choose_classes(k, label, C)[0])(keys))
  present = set(np.unique(np.asarray(label)).tolist())
  subsets = {tuple(np.flatnonzero(c)) for c in chosen}
  assert len(subsets) > 10  # C(6, 3) = 20 possible subsets
  frequency = chosen.mean(0)[[v if v < C else C for v in present]]
  np.testing.assert_allclose(frequency, 0.5, atol=0.15)


@pytest.mark.parametrize('teacher_bn', ['running', 'batch'])
def test_mixed_image_label_and_weight_follow_the_mask_and_the_teacher(teacher_bn):
  config = make_config(**{'dacs.teacher_bn': teacher_bn})
  method, state = init(config)
  batch = make_batch(3)  # any batch size, not only DACS's 2
  xs, ys = batch['source']['image'].astype(jnp.float32), batch['source']['label'].astype(jnp.int32)
  xt = batch['target']['image'].astype(jnp.float32)
  out = jax.device_get(jax.jit(method.mix_batch)(state.teacher, xs, ys, xt, jax.random.PRNGKey(1)))
  m = out['masks']
  assert 0 < m.mean() < 1
  # The teacher by hand: eval mode ('running') or BatchNorm with the batch's own statistics ('batch').
  if teacher_bn == 'running':
    logits = TinySeg(C).apply(state.teacher, xt, train=False)['logits']
  else:
    logits = TinySeg(C).apply(state.teacher, xt, train=True, mutable=['batch_stats'])[0]['logits']
  probs = np.asarray(jax.nn.softmax(logits, -1))
  pseudo, max_probs = probs.argmax(-1), probs.max(-1)
  np.testing.assert_allclose(out['max_probs'], max_probs, rtol=1e-6)
  np.testing.assert_array_equal(out['images'][m], np.asarray(xs)[m])
  np.testing.assert_array_equal(out['images'][~m], np.asarray(xt)[~m])
  np.testing.assert_array_equal(out['labels'][m], np.asarray(ys)[m])
  np.testing.assert_array_equal(out['labels'][~m], pseudo[~m])
  fraction = np.sum(max_probs >= 0.07) / max_probs.size  # over the whole batch, as DACS
  assert 0 < fraction < 1
  np.testing.assert_array_equal(out['weights'][m], 1.0)
  np.testing.assert_allclose(out['weights'][~m], fraction, rtol=1e-6)


@pytest.mark.parametrize('mode', ['threshold_uniform', 'threshold', 'none'])
def test_confidence_weights_match_numpy(mode):
  max_probs = np.random.default_rng(0).uniform(0.9, 1.0, (3, *SHAPE)).astype(np.float32)
  max_probs[0, 0, 0] = 0.968  # the threshold itself counts as confident (>=)
  got = np.asarray(dacs.confidence_weights(jnp.asarray(max_probs), 0.968, mode))
  confident = (max_probs >= 0.968).astype(np.float32)
  expected = {'threshold_uniform': np.full_like(max_probs, confident.sum() / confident.size),
              'threshold': confident, 'none': np.ones_like(max_probs)}[mode]
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert got[0, 0, 0] == (expected[0, 0, 0])


# ---- mean teacher -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('step', [0, 5, 500])
def test_teacher_is_the_ema_of_the_student_after_its_step(step):
  method, state = init(make_config())
  # A teacher unlike the student, at step `step` (0-based index of the step about to be taken).
  teacher = jax.tree.map(lambda x: x + 0.1, state.teacher)
  state = state.replace(seg=state.seg.replace(step=jnp.asarray(step, jnp.int32)), teacher=teacher)
  before = jax.device_get(state)
  new, metrics = jax.device_get(jax.jit(method.train_step)(state, make_batch()))
  alpha = min(1 - 1 / (step + 1), 0.99)  # DACS update_ema_variables(..., iteration=i_iter)
  np.testing.assert_allclose(metrics['ema_alpha'], alpha, rtol=1e-6)
  expected = jax.tree.map(lambda t, s: alpha * t + (1 - alpha) * s, before.teacher, new.seg.variables)
  assert_trees_equal(expected, new.teacher, atol=1e-6)
  assert set(new.teacher) == {'params', 'batch_stats'}
  if step == 0:  # the first update copies the student
    assert_trees_equal(new.teacher, new.seg.variables)
  assert not np.array_equal(new.seg.params['conv']['kernel'], before.seg.params['conv']['kernel'])


def test_student_update_is_the_gradient_of_source_ce_plus_weighted_mixed_ce():
  config = make_config()
  method, state = init(config)
  state = state.replace(teacher=jax.tree.map(lambda x: x * 1.5, state.teacher))  # a teacher of its own
  batch = make_batch()
  old = jax.device_get(state)
  new, metrics = jax.device_get(jax.jit(method.train_step)(state, batch))
  model = TinySeg(C)
  xs, ys = batch['source']['image'].astype(jnp.float32), batch['source']['label'].astype(jnp.int32)
  xt = batch['target']['image'].astype(jnp.float32)
  # The masks the step drew (same key derivation), then everything else by hand.
  mix_key = jax.random.split(jax.random.fold_in(old.key, 0), 3)[1]
  m = np.asarray(dacs.class_mix_masks(mix_key, ys, C))
  probs = np.asarray(jax.nn.softmax(model.apply(old.teacher, xt, train=False)['logits'], -1))
  fraction = np.mean(probs.max(-1) >= 0.07)
  x_mix = np.where(m[..., None], np.asarray(xs), np.asarray(xt))
  y_mix = np.where(m, np.asarray(ys), probs.argmax(-1))
  w_mix = np.where(m, 1.0, fraction)
  valid = y_mix != 255

  def total(params):
    out_s, mut = model.apply({'params': params, 'batch_stats': old.seg.batch_stats}, xs, train=True,
                             mutable=['batch_stats'])
    out_m, _ = model.apply({'params': params, **mut}, jnp.asarray(x_mix), train=True, mutable=['batch_stats'])
    ok = ys != 255
    ce_s = lambda logits: jnp.sum(jnp.where(ok, optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(ok, ys, 0)), 0.0)) / jnp.sum(ok)
    ce_m = optax.softmax_cross_entropy_with_integer_labels(out_m['logits'], jnp.asarray(np.where(valid, y_mix, 0)))
    mixed = jnp.mean(jnp.where(valid, ce_m, 0.0) * w_mix)  # DACS: mean(CE * weight) over all pixels
    return ce_s(out_s['logits']) + ce_s(out_s['aux'][0]) + mixed, mixed

  (loss, mixed), grads = jax.value_and_grad(total, has_aux=True)(old.seg.params)
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss_mix'], mixed, rtol=1e-5)
  lr, wd = config.train.learning_rate, config.train.weight_decay
  expected = jax.tree.map(lambda p, g: p - lr * (g + wd * p), old.seg.params, grads)  # first SGD step
  assert_trees_equal(expected, new.seg.params, atol=1e-6)


def test_dacs_augment_changes_only_the_mixed_images():
  batch = make_batch()
  strong, s1 = init(make_config(**{'dacs.augment': ','.join(['noise'] * 6)}))  # p = 0.5 each
  _, m_strong = jax.device_get(jax.jit(strong.train_step)(s1, batch))
  none, s2 = init(make_config())
  _, m_none = jax.device_get(jax.jit(none.train_step)(s2, batch))
  np.testing.assert_allclose(m_strong['loss_seg'], m_none['loss_seg'], rtol=1e-6)  # source untouched
  assert m_strong['loss_mix'] != m_none['loss_mix']


# ---- config, devices, resume --------------------------------------------------------------------------------------

def test_presets():
  default = dacs_config.get_config()
  assert (default.method, default.model.name, default.dacs.ema_alpha) == ('dacs', 'bisenet', 0.99)
  paper = dacs_config.get_config('deeplabv2,paper')
  assert paper.model.name == 'deeplabv2' and paper.train.head_lr_mult == 10.0
  assert (paper.train.batch_size, paper.train.learning_rate, paper.train.num_steps) == (2, 2.5e-4, 250_000)
  assert paper.data.resize_mode == 'crop'
  assert paper.data.source_train_size == paper.data.target_train_size == (512, 512)
  assert (paper.data.gta5_size, paper.data.cityscapes_size) == ((720, 1280), (512, 1024))
  with pytest.raises(ValueError, match='Unknown preset'):
    dacs_config.get_config('nope')
  with pytest.raises(ValueError, match='pixel_weight'):
    methods.get_method(make_config(**{'dacs.pixel_weight': 'nope'}))


def test_one_and_eight_devices_give_the_same_dacs_steps():
  config = make_config(**{'train.batch_size': 8})
  batch = jax.device_get(make_batch(8))
  (state1, m1), (state8, m8) = (steps_on_mesh(config, n, batch, SHAPE, num_steps=3) for n in (1, 8))
  assert 0 < m1['confident_fraction'] < 1
  n = 8 * SHAPE[0] * SHAPE[1]  # the longest float32 sums run over the batch's pixels (trainer_utils: the bound)
  np.testing.assert_allclose(m1['loss'], m8['loss'], rtol=3 * n * U32)  # step 3: earlier steps' differences too
  np.testing.assert_allclose(m1['loss_mix'], m8['loss_mix'], rtol=3 * n * U32)
  initial = initial_state(config, SHAPE)
  assert_same_up_to_summation_order(state1.seg.variables, state8.seg.variables, initial.seg.variables, n, num_steps=3)
  assert_same_up_to_summation_order(state1.teacher, state8.teacher, initial.teacher, n, num_steps=3)


def test_dacs_run_resumes_bit_for_bit(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('data'))
  straight, resumed = str(tmp_path_factory.mktemp('straight')), str(tmp_path_factory.mktemp('resumed'))
  tiny = {'model.name': TINY_MODEL}  # the default strong augmentation and trainer, a model that compiles fast
  app.run(tiny_config(root, 'dacs', **tiny), workdir=straight)
  app.run(tiny_config(root, 'dacs', **tiny, **{'train.stop_after_steps': 3}), workdir=resumed)
  app.run(tiny_config(root, 'dacs', **tiny), workdir=resumed)
  a, b = restore_params(straight), restore_params(resumed)
  assert set(a) == {'seg', 'teacher', 'key'}
  assert set(a['teacher']) == {'params', 'batch_stats'}
  assert_trees_equal(a, b)
  assert read_eval(straight) == read_eval(resumed)
  assert os.path.exists(os.path.join(straight, 'checkpoints', 'best'))
  assert not math.isnan(read_eval(straight)['miou'])
