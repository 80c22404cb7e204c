"""Tests for rtda_jax.augment: tiny 16x24 examples, each op jit-compiled once (cached) and reused."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rtda_jax import augment

H, W = 16, 24
ALL_OPS = sorted(augment.OPS)
RANDOM_OPS = [n for n in ALL_OPS if n not in ('hflip', 'grayscale')]  # ops whose output depends on the key


@functools.lru_cache(maxsize=None)
def jitted(name: str, **params):
  """The jit-compiled op `name` with p=1 unless given (compiled once per test session)."""
  return jax.jit(augment.make_op({'name': name, 'p': 1.0, **params}))


def key(i: int) -> jax.Array:
  return jax.random.key(i)


@pytest.fixture(scope='module')
def example():
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.uniform(0, 255, (H, W, 3)), jnp.float32)
  label = jnp.asarray(rng.integers(0, 19, (H, W)), jnp.int32)
  label = label.at[2:6, 3:9].set(augment.IGNORE)
  return image, label


def block_example():
  """Blocks of 8x8 pixels with constant labels 0..5; the red channel encodes the label (10 * label + 10)."""
  label = np.repeat(np.repeat(np.arange(6).reshape(2, 3), 8, 0), 8, 1).astype(np.int32)  # [16, 24]
  image = np.stack([10.0 * label + 10.0, np.full_like(label, 50.0, dtype=float), 200.0 - 10.0 * label], -1)
  return jnp.asarray(image, jnp.float32), jnp.asarray(label)


@pytest.mark.parametrize('name', sorted(augment.GEOMETRIC))
def test_geometric_ops_keep_image_and_label_aligned(name):
  image, label = block_example()
  checked = 0
  for i in range(4):
    out_image, out_label = map(np.asarray, jitted(name)(key(i), image, label))
    # Pixels whose 3x3 output neighbourhood has one non-ignore label sample the interior of a block, where
    # bilinear interpolation is exact up to rounding; border pixels of the output are left out.
    padded = np.pad(out_label, 1, constant_values=-1)
    windows = np.stack([padded[dy:dy + H, dx:dx + W] for dy in range(3) for dx in range(3)])
    inside = np.all(windows == out_label, axis=0) & (out_label != augment.IGNORE)
    np.testing.assert_allclose(out_image[..., 0][inside], 10.0 * out_label[inside] + 10.0, atol=1e-3)
    np.testing.assert_allclose(out_image[..., 2][inside], 200.0 - 10.0 * out_label[inside], atol=1e-3)
    checked += inside.sum()
  assert checked > 4 * 50


@pytest.mark.parametrize('name', sorted(augment.PHOTOMETRIC))
def test_photometric_ops_never_touch_labels(name, example):
  image, label = example
  _, out_label = jitted(name)(key(0), image, label)
  np.testing.assert_array_equal(np.asarray(out_label), np.asarray(label))


@pytest.mark.parametrize('name', ALL_OPS)
def test_same_key_gives_same_output(name, example):
  a = jitted(name)(key(3), *example)
  b = jitted(name)(key(3), *example)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize('name', RANDOM_OPS)
def test_different_keys_give_different_outputs(name, example):
  outputs = [np.asarray(jitted(name)(key(i), *example)[0]) for i in range(3)]
  assert not np.array_equal(outputs[0], outputs[1]) or not np.array_equal(outputs[0], outputs[2])


@pytest.mark.parametrize('name', ALL_OPS)
def test_ops_preserve_shape_and_dtype(name, example):
  image, label = example
  out_image, out_label = jitted(name)(key(0), image, label)
  assert out_image.shape == image.shape and out_image.dtype == image.dtype
  assert out_label.shape == label.shape and out_label.dtype == label.dtype
  assert float(out_image.min()) >= 0.0 and float(out_image.max()) <= 255.0


@pytest.mark.parametrize('name', ALL_OPS)
def test_p_zero_is_identity(name, example):
  image, label = example
  out_image, out_label = jax.jit(augment.make_op({'name': name, 'p': 0.0}))(key(0), image, label)
  np.testing.assert_array_equal(np.asarray(out_image), np.asarray(image))
  np.testing.assert_array_equal(np.asarray(out_label), np.asarray(label))


def test_flip_keeps_ignore_pixels_ignore(example):
  image, label = example
  out_image, out_label = jitted('hflip')(key(0), image, label)
  np.testing.assert_array_equal(np.asarray(out_label), np.asarray(label)[:, ::-1])
  np.testing.assert_array_equal(np.asarray(out_image), np.asarray(image)[:, ::-1])


def test_zoom_out_pads_image_with_zero_and_label_with_ignore():
  image, label = block_example()  # no ignore pixels, every image value >= 10
  out_image, out_label = map(np.asarray, jitted('scale', min=0.5, max=0.5)(key(1), image, label))
  padding = out_label == augment.IGNORE
  assert 8 * 12 <= (~padding).sum() <= 9 * 13  # the image shrunk to half its size on a padded canvas
  assert np.all(out_image[padding] == 0.0)
  assert np.all(out_image[~padding] >= 10.0 - 1e-3)
  assert set(np.unique(out_label[~padding])) <= set(range(6))


def test_rotation_pads_corners_with_ignore():
  image, label = block_example()
  for i in range(3):
    _, out_label = jitted('rotate', degrees=30.0)(key(i), image, label)
    out_label = np.asarray(out_label)
    assert out_label[0, 0] == augment.IGNORE or out_label[0, -1] == augment.IGNORE
    assert out_label[H // 2, W // 2] != augment.IGNORE


def test_geometric_ops_never_turn_ignore_into_a_class():
  label = np.full((H, W), augment.IGNORE, np.int32)
  label[4:12, 6:18] = 7
  image = jnp.zeros((H, W, 3), jnp.float32)
  for name in sorted(augment.GEOMETRIC):
    for i in range(3):
      _, out_label = jitted(name)(key(i), image, jnp.asarray(label))
      out_label = np.asarray(out_label)
      assert set(np.unique(out_label)) <= {7, augment.IGNORE}
      assert (out_label == 7).sum() <= 4 * (label == 7).sum()  # at most a 2x zoom of the labelled area


def test_probability_gate_applies_a_fraction_of_the_time(example):
  image, label = example
  images, labels = jnp.stack([image] * 64), jnp.stack([label] * 64)
  flip = jax.jit(augment.batched(augment.build([{'name': 'hflip', 'p': 0.5}])))
  out_images, _ = flip(key(0), images, labels)
  flipped = np.all(np.asarray(out_images) == np.asarray(image)[:, ::-1], axis=(1, 2, 3))
  assert 16 <= flipped.sum() <= 48


def test_hue_with_zero_strength_round_trips_through_hsv(example):
  image, label = example
  out_image, _ = jitted('hue', strength=0.0)(key(0), image, label)
  np.testing.assert_allclose(np.asarray(out_image), np.asarray(image), atol=1e-3)


def test_dacs_brightness_is_additive():
  image = jnp.full((H, W, 3), 100.0, jnp.float32)
  label = jnp.zeros((H, W), jnp.int32)
  op = augment.brightness(p=1.0, strength=0.25, style='dacs')
  shifts = [float(op(key(i), image, label)[0][0, 0, 0]) - 100.0 for i in range(4)]
  assert all(abs(s) <= 0.25 * 255 + 1e-3 for s in shifts) and max(abs(s) for s in shifts) > 5.0


def test_dacs_blur_kernel_size_rule():
  assert [augment.dacs_kernel_size(n) for n in (16, 24, 512, 1024, 720, 1280)] == [1, 3, 51, 103, 71, 127]


def test_build_presets():
  image, label = block_example()
  assert augment.build('none') is augment.identity and augment.build(()) is augment.identity
  assert augment.geometric('strong') is augment.identity
  outputs = {preset: jax.jit(augment.build(preset))(key(0), image, label) for preset in ('light', 'strong')}
  for out_image, out_label in outputs.values():
    assert out_image.shape == image.shape and out_label.dtype == label.dtype
  np.testing.assert_array_equal(np.asarray(outputs['strong'][1]), np.asarray(label))  # strong: photometric only


def test_build_from_dict_string_and_configdict_entries():
  image, label = block_example()
  spec = ('hflip', {'name': 'hflip', 'p': 1.0},
          ml_collections.ConfigDict({'name': 'scale', 'p': 1.0, 'min': 0.5, 'max': 0.5}))
  out_image, out_label = jax.jit(augment.build(spec))(key(2), image, label)
  assert (np.asarray(out_label) == augment.IGNORE).any()  # the zoom-out padded
  photometric_only = augment.photometric(spec)
  assert photometric_only is augment.identity


def test_unknown_names_and_parameters_raise():
  with pytest.raises(ValueError, match='hflip'):
    augment.build(['hflip', 'sharpen'])
  with pytest.raises(ValueError, match='hflip'):
    augment.build('heavy')
  with pytest.raises(ValueError, match='sigma'):
    augment.build([{'name': 'blur', 'sigma': 2.0}])
  with pytest.raises(ValueError):
    augment.build([{'name': 'scale', 'p': 1.5}])


def test_batched_under_jit_differs_per_example(example):
  image, label = example
  images, labels = jnp.stack([image] * 4), jnp.stack([label] * 4)
  fn = jax.jit(augment.batched(augment.build([{'name': 'scale', 'p': 1.0}, {'name': 'brightness', 'p': 1.0}])))
  out_images, out_labels = fn(key(0), images, labels)
  assert out_images.shape == images.shape and out_labels.shape == labels.shape
  out_images = np.asarray(out_images)
  assert all(not np.array_equal(out_images[0], out_images[i]) for i in range(1, 4))
  again, _ = fn(key(0), images, labels)
  np.testing.assert_array_equal(np.asarray(again), out_images)
