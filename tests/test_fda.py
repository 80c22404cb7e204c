"""FDA: the Fourier low-frequency swap against an independent NumPy version of the reference code, the loss of a step
against a hand computation, self-training's pseudo-label term, presets, 1 vs 8 devices, exact resume."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import fda as fda_config
from rtda_jax import app, methods
from rtda_jax.methods import base
from rtda_jax.methods import fda
from tests.trainer_utils import (TINY_MODEL, TinySeg, assert_trees_equal, override, read_eval, restore_params,
                                 init_and_step, random_batch, steps_on_mesh, tiny_config)

SHAPE = (32, 32)




# ---- an independent NumPy version of FDA's swap ---------------------------------------------------------------------


def numpy_fda(src: np.ndarray, trg: np.ndarray, beta: float, window: str) -> np.ndarray:
  """FDA on [B, H, W, C] float64 images, written from the reference code with fftshift and a window in the shifted
  spectrum. 'centred' is FDA_source_to_target_np: the (2b+1)-square [c-b, c+b], real part of ifft2. 'corners' is
  FDA_source_to_target: the four b x b corners of the unshifted spectrum, i.e. the 2b-square [c-b, c+b-1] of the
  shifted one, inverted with torch.irfft(onesided=False), which keeps the first W//2+1 columns (NumPy's irfft2)."""
  h, w = src.shape[1:3]
  fs, ft = np.fft.fft2(src, axes=(1, 2)), np.fft.fft2(trg, axes=(1, 2))
  amp_s, pha_s, amp_t = np.abs(fs), np.angle(fs), np.abs(ft)
  a_s = np.fft.fftshift(amp_s, axes=(1, 2))
  a_t = np.fft.fftshift(amp_t, axes=(1, 2))
  b = int(np.floor(min(h, w) * beta))
  ch, cw = h // 2, w // 2
  end = b + 1 if window == 'centred' else b
  a_s[:, ch - b:ch + end, cw - b:cw + end] = a_t[:, ch - b:ch + end, cw - b:cw + end]
  spec = np.fft.ifftshift(a_s, axes=(1, 2)) * np.exp(1j * pha_s)
  if window == 'centred':
    return np.real(np.fft.ifft2(spec, axes=(1, 2)))
  return np.fft.irfft2(spec[:, :, :w // 2 + 1], s=(h, w), axes=(1, 2))


def random_images(shape, seed, lo=0, hi=255):
  return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


@pytest.mark.parametrize('window', ['corners', 'centred'])
@pytest.mark.parametrize('shape, beta', [((2, 32, 48, 3), 0.09), ((2, 32, 48, 3), 0.05), ((1, 27, 33, 3), 0.1)])
def test_swap_matches_numpy_reference(window, shape, beta):
  src, trg = random_images(shape, 0), random_images(shape, 1)
  assert fda.window_half_size(shape[1:3], beta) >= 1
  expected = numpy_fda(src.astype(np.float64), trg.astype(np.float64), beta, window)
  got = np.asarray(fda.low_frequency_swap(src, trg, beta, window, clip=False))
  np.testing.assert_allclose(got, expected, atol=2e-3, rtol=0)
  clipped = np.asarray(fda.low_frequency_swap(src, trg, beta, window))
  np.testing.assert_allclose(clipped, np.clip(expected, 0, 255), atol=2e-3, rtol=0)
  assert not np.allclose(got, src, atol=1.0)  # the swap did something


def test_corners_window_is_fdas_four_corners():
  h, w, b = 20, 30, 3
  full = np.zeros((h, w), bool)
  for rows in (slice(0, b), slice(h - b, h)):
    for cols in (slice(0, b), slice(w - b, w)):
      full[rows, cols] = True
  half = fda.low_frequency_window((h, w), 0.16, 'corners')  # floor(20 * 0.16) = 3
  np.testing.assert_array_equal(half, full[:, :w // 2 + 1])


@pytest.mark.parametrize('shape, beta', [((2, 32, 48, 3), 0.0), ((1, 16, 16, 3), 0.05)])  # b = 0 both times
def test_beta_zero_returns_the_source(shape, beta):
  src, trg = random_images(shape, 2), random_images(shape, 3)
  assert fda.window_half_size(shape[1:3], beta) == 0
  np.testing.assert_allclose(np.asarray(fda.low_frequency_swap(src, trg, beta)), src, atol=1e-3)


def test_centred_window_at_beta_zero_swaps_only_the_mean():
  src, trg = random_images((2, 16, 24, 3), 4, 50, 150), random_images((2, 16, 24, 3), 5, 100, 200)
  out = np.asarray(fda.low_frequency_swap(src, trg, 0.0, 'centred', clip=False))
  expected = src - src.mean(axis=(1, 2), keepdims=True) + trg.mean(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(out, expected, atol=1e-3)


@pytest.mark.parametrize('window', ['corners', 'centred'])
def test_swap_keeps_the_source_phase(window):
  src, trg = random_images((2, 32, 40, 3), 6), random_images((2, 32, 40, 3), 7)
  out = np.asarray(fda.low_frequency_swap(src, trg, 0.09, window, clip=False), np.float64)
  f_out, f_src = np.fft.fft2(out, axes=(1, 2)), np.fft.fft2(src.astype(np.float64), axes=(1, 2))
  clear = (np.abs(f_out) > 1e-2 * np.abs(f_out).max()) & (np.abs(f_src) > 1e-2 * np.abs(f_src).max())
  diff = np.angle(f_out[clear] * np.conj(f_src[clear]))  # wrapped phase difference
  assert clear.sum() > 100
  np.testing.assert_allclose(diff, 0.0, atol=1e-3)
  # ... while the low-frequency amplitude is the target's (bin (1, 1) is inside the window for both windows).
  f_trg = np.fft.fft2(trg.astype(np.float64), axes=(1, 2))
  np.testing.assert_allclose(np.abs(f_out[:, 1, 1]), np.abs(f_trg[:, 1, 1]), rtol=1e-4)


def test_swap_output_is_clipped_to_0_255():
  src, trg = random_images((2, 32, 32, 3), 8), random_images((2, 32, 32, 3), 9)
  raw = np.asarray(fda.low_frequency_swap(src, trg, 0.09, clip=False))
  out = np.asarray(fda.low_frequency_swap(src, trg, 0.09))
  assert raw.min() < 0 or raw.max() > 255  # random images overshoot, so the clip matters here
  assert out.min() >= 0 and out.max() <= 255


def test_style_targets_is_a_permutation_of_the_target_batch():
  src = jnp.zeros((6, 4, 4, 3))
  tgt = jnp.arange(6, dtype=jnp.float32)[:, None, None, None] * jnp.ones((6, 4, 4, 3))
  styles = np.asarray(fda.style_targets(jax.random.PRNGKey(3), src, tgt))[:, 0, 0, 0]
  assert sorted(styles.tolist()) == list(range(6))
  resized = fda.style_targets(jax.random.PRNGKey(3), jnp.zeros((6, 8, 6, 3)), tgt)
  assert resized.shape == (6, 8, 6, 3)


# ---- the loss --------------------------------------------------------------------------------------------------------


def test_entropy_penalty_matches_a_hand_computation():
  from rtda_jax import losses
  logits = np.random.default_rng(0).normal(0, 2, (2, 3, 4, 19))
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  ent = -(p * np.log(p)).sum(-1) / math.log(19)
  expected = np.mean((ent ** 2 + 1e-8) ** 2)
  np.testing.assert_allclose(float(losses.fda_entropy_penalty(jnp.asarray(logits, jnp.float32), 2.0)), expected,
                             rtol=1e-5)


def make_config(preset=None, **overrides):
  config = fda_config.get_config(preset)
  config.model.name = TINY_MODEL
  config.train.batch_size = 2
  config.train.weight_decay = 1e-3
  config.fda.beta = 0.09
  config.fda.entropy_weight = 0.5  # large, so the entropy gradient is a visible part of the update
  return override(config, overrides)


def make_batch(batch_size=2, seed=0, same_target=False):
  batch = random_batch(batch_size, SHAPE, seed)
  if same_target:  # every source image then takes the same style, whatever the permutation
    batch['target']['image'][:] = batch['target']['image'][:1]
  return jax.tree.map(jnp.asarray, batch)


init_and_step = functools.partial(init_and_step, shape=SHAPE)


def hand_loss(config, old, batch, pseudo=False):
  """CE(swapped source) + aux CE + w * robust entropy(target) [+ CE(target, its labels)], written out by hand."""
  model = TinySeg(19)
  style = np.asarray(batch['target']['image'], np.float64)
  swapped = np.clip(numpy_fda(np.asarray(batch['source']['image'], np.float64), style, config.fda.beta, 'corners'),
                    0, 255)
  xs, ys = jnp.asarray(swapped, jnp.float32), batch['source']['label'].astype(jnp.int32)
  xt, yt = batch['target']['image'].astype(jnp.float32), batch['target']['label'].astype(jnp.int32)

  def total(params):
    out_s, mut = model.apply({'params': params, 'batch_stats': old.seg.batch_stats}, xs, train=True,
                             mutable=['batch_stats'])
    out_t, _ = model.apply({'params': params, **mut}, xt, train=True, mutable=['batch_stats'])
    ce = lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    p = jax.nn.softmax(out_t['logits'], -1)
    ent = -jnp.sum(p * jnp.log(p), -1) / jnp.log(19.0)
    loss = (ce(out_s['logits'], ys) + ce(out_s['aux'][0], ys)
            + config.fda.entropy_weight * jnp.mean((ent ** 2 + 1e-8) ** 2))
    if pseudo:
      loss = loss + ce(out_t['logits'], yt) + ce(out_t['aux'][0], yt)
    return loss

  return jax.value_and_grad(total)(old.seg.params)


@pytest.mark.parametrize('pseudo', [False, True])
def test_fda_update_is_the_gradient_of_the_hand_written_loss(pseudo):
  config = make_config(**({'selftrain.pseudo_dir': '/unused/pseudo'} if pseudo else {}))
  batch = make_batch(same_target=True)
  _, old, new, metrics = init_and_step(config, batch)
  loss, grads = hand_loss(config, old, batch, pseudo)
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-4)
  assert ('loss_pseudo' in metrics) == pseudo
  lr, wd = config.train.learning_rate, config.train.weight_decay
  expected = jax.tree.map(lambda p, g: p - lr * (g + wd * p), old.seg.params, grads)  # first SGD step
  assert_trees_equal(expected, new.seg.params, atol=2e-5)


def test_target_labels_are_unused_without_pseudo_labels():
  batch = make_batch()
  other = {**batch, 'target': {**batch['target'], 'label': (batch['target']['label'] + 1) % 19}}
  _, _, a, _ = init_and_step(make_config(), batch)
  _, _, b, _ = init_and_step(make_config(), other)
  assert_trees_equal(a.seg.params, b.seg.params)


def test_entropy_waits_for_its_start_step():
  config = make_config(**{'fda.entropy_start_step': 5})
  _, _, _, metrics = init_and_step(config, make_batch())
  np.testing.assert_allclose(metrics['loss'], metrics['loss_seg'] + metrics['loss_aux'], rtol=1e-6)
  assert metrics['loss_ent'] > 0


def test_selftrain_reads_the_target_from_the_pseudo_folder():
  method = methods.get_method(make_config(**{'selftrain.pseudo_dir': '/data/pseudo/x'}))
  data, name = method.train_data('target')
  assert (data.cityscapes_dir, name) == ('/data/pseudo/x', 'cityscapes')
  assert method.config.data.cityscapes_dir is None  # the run's own config (evaluation) is unchanged
  assert method.train_data('source')[0] is method.config.data
  plain = methods.get_method(make_config())
  assert plain.train_data('target')[0] is plain.config.data


@pytest.mark.parametrize('preset, name, beta, model', [
    (None, 'fda', 0.01, 'bisenet'), ('b001', 'fda_b001', 0.01, 'bisenet'), ('b005', 'fda_b005', 0.05, 'bisenet'),
    ('b009,deeplabv2', 'fda_deeplabv2_b009', 0.09, 'deeplabv2'), ('beta0.05', 'fda_b005', 0.05, 'bisenet'),
    ('mbt', 'fda_mbt', 0.01, 'bisenet'), ('deeplabv2:b005:selftrain', 'fda_deeplabv2_b005_st', 0.05, 'deeplabv2')])
def test_presets(preset, name, beta, model):
  config = fda_config.get_config(preset)
  assert (config.name, config.fda.beta, config.model.name, config.method) == (name, beta, model, 'fda')
  family = 'fda_deeplabv2' if model == 'deeplabv2' else 'fda'
  assert config.mbt.workdirs == f'runs/{family}_b001,runs/{family}_b005,runs/{family}_b009'
  if preset and 'selftrain' in preset:
    config.data.root = '/elsewhere'
    assert config.selftrain.pseudo_dir == f'/elsewhere/pseudo/{family}_mbt'
  else:
    assert config.selftrain.pseudo_dir is None


def test_paper_preset_is_the_course_setting():
  config = fda_config.get_config('b009,paper')
  assert config.train.batch_size == 2 and config.data.target_train_size == (512, 1024)
  assert config.data.source_train_size == (512, 1024) and config.data.resize_mode == 'crop'


def test_unknown_window_is_an_error():
  with pytest.raises(ValueError, match='fda.window'):
    methods.get_method(make_config(**{'fda.window': 'round'}))


def test_one_and_eight_devices_give_the_same_fda_step():
  config = make_config(**{'train.batch_size': 8})
  batch = jax.device_get(make_batch(8))
  (state1, m1), (state8, m8) = (steps_on_mesh(config, n, batch, SHAPE) for n in (1, 8))
  np.testing.assert_allclose(m1['loss'], m8['loss'], rtol=1e-5)
  assert_trees_equal(state1.seg.params, state8.seg.params, atol=1e-5)


def test_fda_run_resumes_bit_for_bit(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('data'))
  straight, resumed = str(tmp_path_factory.mktemp('straight')), str(tmp_path_factory.mktemp('resumed'))
  cfg = lambda **kw: tiny_config(root, 'fda', 'b009', **{'model.name': TINY_MODEL, **kw})
  app.run(cfg(), workdir=straight)
  app.run(cfg(**{'train.stop_after_steps': 3}), workdir=resumed)
  app.run(cfg(), workdir=resumed)
  a, b = restore_params(straight), restore_params(resumed)
  assert set(a) == {'seg', 'key'}
  assert_trees_equal(a, b)
  assert read_eval(straight) == read_eval(resumed)
