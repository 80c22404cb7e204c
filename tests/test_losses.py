"""Losses against numbers computed by hand (numpy / math), on tiny inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtda_jax import losses

IGN = 255


def np_log_softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_pixel_ce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Per-pixel CE, 0 where the label is IGN."""
  logp = np_log_softmax(logits)
  safe = np.where(labels == IGN, 0, labels)
  ce = -np.take_along_axis(logp, safe[..., None], -1)[..., 0]
  return np.where(labels == IGN, 0.0, ce)


def binary_logits(p_label0: list[float]) -> np.ndarray:
  """[1, 1, N, 2] logits whose softmax gives probability p to class 0 at each of N pixels."""
  p = np.asarray(p_label0, np.float64)
  return np.stack([np.log(p), np.log1p(-p)], -1)[None, None].astype(np.float32)


@pytest.fixture
def small():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32) * 2
  labels = rng.integers(0, 5, size=(2, 3, 4))
  labels[0, 0, :2] = IGN
  labels[1, 2, 3] = IGN
  return logits, labels


def test_cross_entropy_with_ignore_by_hand():
  logits = np.array([[[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.5]]]], np.float32)  # [1, 1, 3, 3]
  labels = np.array([[[0, IGN, 1]]])
  ce0 = -(2.0 - math.log(math.exp(2) + 1 + math.exp(-1)))
  ce2 = -(3.0 - math.log(math.exp(1) + math.exp(3) + math.exp(0.5)))
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), (ce0 + ce2) / 2, rtol=1e-6)


def test_cross_entropy_all_ignored_is_zero_with_finite_grad():
  logits = jnp.ones((1, 2, 2, 4))
  labels = jnp.full((1, 2, 2), IGN)
  assert float(losses.cross_entropy(logits, labels)) == 0.0
  grad = jax.grad(losses.cross_entropy)(logits, labels)
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_weighted_cross_entropy_divides_by_valid_pixels(small):
  logits, labels = small
  w = np.random.default_rng(1).uniform(size=labels.shape).astype(np.float32)
  expected = (w * np_pixel_ce(logits, labels)).sum() / (labels != IGN).sum()
  np.testing.assert_allclose(losses.cross_entropy(logits, labels, weights=w), expected, rtol=1e-5)


def test_weighted_cross_entropy_dacs_normalisation_over_all_pixels(small):
  logits, labels = small
  w = np.random.default_rng(1).uniform(size=labels.shape).astype(np.float32)
  expected = np.mean(w * np_pixel_ce(logits, labels))  # DACS: torch.mean(ce * weight), ce = 0 on ignored
  got = losses.cross_entropy(logits, labels, weights=w, normalize='all')
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_ohem_threshold_branch_keeps_pixels_below_thresh():
  # p(label) = 0.9, 0.8, 0.5, 0.3 and one ignored pixel; thresh 0.7 keeps the 0.5 and 0.3 pixels (2 >= n_min = 1).
  logits = binary_logits([0.9, 0.8, 0.5, 0.3, 0.1])
  labels = np.array([[[0, 0, 0, 0, IGN]]])
  got = losses.ohem_cross_entropy(logits, labels, thresh=0.7, min_kept_fraction=0.25)
  np.testing.assert_allclose(got, (-math.log(0.5) - math.log(0.3)) / 2, rtol=1e-5)


def test_ohem_min_kept_branch_keeps_the_hardest():
  # 6 valid pixels, n_min = floor(6 * 0.5) = 3, only one pixel is hard (p = 0.6 < 0.7): the 3 hardest are kept.
  logits = binary_logits([0.99, 0.95, 0.9, 0.8, 0.6, 0.97, 0.01, 0.02])
  labels = np.array([[[0, 0, 0, 0, 0, 0, IGN, IGN]]])
  got = losses.ohem_cross_entropy(logits, labels, thresh=0.7, min_kept_fraction=0.5)
  np.testing.assert_allclose(got, -(math.log(0.6) + math.log(0.8) + math.log(0.9)) / 3, rtol=1e-5)


def test_ohem_matches_coincheung_semantics_on_random_input(small):
  logits, labels = small
  branches = set()
  for thresh in [0.7, 0.05, 0.001]:  # 21, 11 and 0 hard pixels for n_min = 21 // 4 = 5
    ce = np_pixel_ce(logits, labels).reshape(-1)  # CoinCheung: per-pixel CE with 0 on ignored pixels
    n_min = int((labels != IGN).sum()) // 4
    hard = ce[ce > -math.log(thresh)]
    branches.add(hard.size >= n_min)
    expected = hard.mean() if hard.size >= n_min else np.sort(ce)[::-1][:n_min].mean()
    got = jax.jit(losses.ohem_cross_entropy, static_argnums=(2, 3))(logits, labels, thresh, 0.25)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert branches == {True, False}


def test_ohem_all_ignored_is_zero_with_finite_grad():
  logits = jnp.zeros((1, 4, 4, 3))
  labels = jnp.full((1, 4, 4), IGN)
  assert float(losses.ohem_cross_entropy(logits, labels)) == 0.0
  assert bool(jnp.all(jnp.isfinite(jax.grad(losses.ohem_cross_entropy)(logits, labels))))


def test_focal_with_gamma_zero_equals_cross_entropy(small):
  logits, labels = small
  np.testing.assert_allclose(losses.focal_loss(logits, labels, gamma=0.0), losses.cross_entropy(logits, labels),
                             rtol=1e-6)


def test_focal_by_hand_with_per_class_alpha():
  logits = binary_logits([0.9, 0.4])  # pixel 0: label 0 with p 0.9; pixel 1: label 1 with p 0.6
  labels = np.array([[[0, 1]]])
  alpha = [0.25, 0.75]
  expected = (-0.25 * 0.1 ** 2 * math.log(0.9) - 0.75 * 0.4 ** 2 * math.log(0.6)) / 2
  np.testing.assert_allclose(losses.focal_loss(logits, labels, gamma=2.0, alpha=alpha), expected, rtol=1e-5)


def test_ce_focal_is_weighted_sum(small):
  logits, labels = small
  got = losses.ce_focal_loss(logits, labels, ce_weight=0.5, focal_weight=2.0)
  expected = 0.5 * losses.cross_entropy(logits, labels) + 2.0 * losses.focal_loss(logits, labels)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_dice_by_hand_ignores_ignored_pixels():
  logits = binary_logits([0.9, 0.2, 0.5])  # class-0 probabilities; the third pixel is ignored
  labels = np.array([[[0, 1, IGN]]])
  p0, p1 = np.array([0.9, 0.2]), np.array([0.1, 0.8])
  d0 = (2 * 0.9 + 1) / (p0.sum() + 1 + 1)
  d1 = (2 * 0.8 + 1) / (p1.sum() + 1 + 1)
  np.testing.assert_allclose(losses.dice_loss(logits, labels, smooth=1.0), 1 - (d0 + d1) / 2, rtol=1e-5)


def test_entropy_of_uniform_logits_is_log_c():
  ent = losses.entropy(jnp.zeros((2, 3, 4, 19)))
  assert ent.shape == (2, 3, 4)
  np.testing.assert_allclose(ent, math.log(19), rtol=1e-6)


def test_fda_entropy_penalty_matches_fda_formula(small):
  logits, _ = small
  logp = np_log_softmax(logits)
  ent = -(np.exp(logp) * logp).sum(-1) / math.log(5)
  expected = np.mean((ent ** 2 + 1e-8) ** 2.0)
  np.testing.assert_allclose(losses.fda_entropy_penalty(logits, eta=2.0), expected, rtol=1e-5)
  np.testing.assert_allclose(losses.fda_entropy_penalty(jnp.zeros((1, 2, 2, 19))), (1 + 1e-8) ** 2, rtol=1e-6)


def test_bce_with_logits_by_hand_and_target_semantics():
  x = np.array([[-2.0, 0.0], [1.0, 3.0]], np.float32)
  sig = 1 / (1 + np.exp(-x.astype(np.float64)))
  np.testing.assert_allclose(losses.bce_with_logits(x, 1.0), np.mean(-np.log(sig)), rtol=1e-6)
  np.testing.assert_allclose(losses.bce_with_logits(x, 0.0), np.mean(-np.log(1 - sig)), rtol=1e-6)
  # Positive logits mean "target domain" (label 1): cheap towards 1, costly towards 0.
  assert losses.bce_with_logits(jnp.full((4,), 5.0), 1.0) < 0.01 < 4.9 < losses.bce_with_logits(jnp.full((4,), 5.0), 0.0)
  # Gradient descent on the logits moves them towards the target label.
  assert float(jax.grad(losses.bce_with_logits)(jnp.zeros(()), 1.0)) < 0


def test_least_squares_by_hand_and_dispatch():
  x = np.array([0.5, -1.0, 2.0], np.float32)
  np.testing.assert_allclose(losses.least_squares(x, 1.0), np.mean((x - 1.0) ** 2), rtol=1e-6)
  np.testing.assert_allclose(losses.adversarial_loss(x, 0.0, kind='ls'), np.mean(x ** 2), rtol=1e-6)
  np.testing.assert_allclose(losses.adversarial_loss(x, 1.0, kind='bce'), losses.bce_with_logits(x, 1.0))
  with pytest.raises(ValueError, match='unknown adversarial'):
    losses.adversarial_loss(x, 1.0, kind='wgan')


@pytest.mark.parametrize('name', ['ce', 'ohem', 'focal', 'ce_focal', 'dice'])
def test_bfloat16_logits_give_float32_loss(small, name):
  logits, labels = small
  loss_fn = losses.get_segmentation_loss(name)
  got = loss_fn(jnp.asarray(logits, jnp.bfloat16), labels)
  assert got.dtype == jnp.float32 and got.shape == ()
  ref = loss_fn(jnp.asarray(jnp.asarray(logits, jnp.bfloat16), jnp.float32), labels)
  np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_other_losses_are_float32_for_bfloat16_inputs(small):
  logits = jnp.asarray(small[0], jnp.bfloat16)
  assert losses.entropy(logits).dtype == jnp.float32
  assert losses.fda_entropy_penalty(logits).dtype == jnp.float32
  assert losses.adversarial_loss(logits, 1.0).dtype == jnp.float32
  assert losses.adversarial_loss(logits, 1.0, kind='ls').dtype == jnp.float32


def test_get_segmentation_loss_binds_kwargs_and_rejects_unknown(small):
  logits, labels = small
  np.testing.assert_allclose(losses.get_segmentation_loss('ce')(logits, labels),
                             np_pixel_ce(logits, labels).sum() / (labels != IGN).sum(), rtol=1e-5)
  focal0 = losses.get_segmentation_loss('focal', gamma=0.0)
  np.testing.assert_allclose(focal0(logits, labels), losses.cross_entropy(logits, labels), rtol=1e-6)
  with pytest.raises(ValueError, match='unknown segmentation loss'):
    losses.get_segmentation_loss('lovasz')
