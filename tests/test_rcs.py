"""Rare-class sampling: counts, frequencies and probabilities against NumPy on hand-made labels, the law of the draws,
determinism, exact resume, per-process draws, the cache beside the build, and the trainer (source domain only)."""

from __future__ import annotations

import json
import logging
import math
import os

import jax
import numpy as np
import pytest
from PIL import Image

from rtda_jax import app, labels
from rtda_jax.data import builders, pipeline, rcs
from tests.test_builders import _save, data_config, independent_train_ids
from tests.trainer_utils import TINY, TINY_MODEL, tiny_config

STORED = (16, 32)  # [H, W]: raw = stored, so the stored labels are the hand-made ones pixel for pixel
MIN_PIXELS = 20
T = 0.01
ROAD, BUILDING, VEGETATION, PERSON, CAR, TRAIN, BICYCLE = 0, 2, 8, 11, 13, 16, 18
# Each image: road everywhere but an ignored top row (32 px) and these (class: pixels) runs.
PARTS = [
    {BUILDING: 100},
    {BUILDING: 100, PERSON: MIN_PIXELS + 1},  # the only image with more than MIN_PIXELS of person
    {BUILDING: 100, PERSON: MIN_PIXELS},  # exactly MIN_PIXELS: not enough (DAFormer: pixels > min_pixels)
    {BUILDING: 100, CAR: 40},
    {CAR: 30, BICYCLE: 25},
    {TRAIN: 10},  # train is present but never above MIN_PIXELS: never drawn
    {VEGETATION: 200},
    {VEGETATION: 200, BICYCLE: 60},
    {},
    {CAR: 90},
]


def hand_label(parts: dict[int, int]) -> np.ndarray:
  """uint8 [16, 32] train ids: row 0 ignored, then each class's pixels as one run in raster order, road elsewhere."""
  flat = np.full(STORED[0] * STORED[1], ROAD, np.uint8)
  flat[:STORED[1]] = labels.IGNORE
  at = STORED[1]
  for c, n in parts.items():
    flat[at:at + n] = c
    at += n
  return flat.reshape(STORED)


LABELS = [hand_label(p) for p in PARTS]


def expected_counts() -> np.ndarray:
  """[N, C] pixels of each class, by direct comparison on the hand-made arrays."""
  return np.array([[int((lab == c).sum()) for c in range(labels.NUM_CLASSES)] for lab in LABELS], np.int64)


def write_hand_gta5(root: str) -> str:
  """The hand-made labels as a GTA5 folder (raw label ids, palette PNGs) with random images."""
  rng = np.random.default_rng(0)
  raw_id = {l.train_id: l.id for l in reversed(labels.LABELS) if 0 <= l.train_id < labels.NUM_CLASSES}
  raw_id[labels.IGNORE] = 0  # 'unlabeled'
  for i, lab in enumerate(LABELS, 1):
    _save(rng.integers(0, 256, (*STORED, 3), dtype=np.uint8), os.path.join(root, 'images', f'{i:05d}.png'))
    _save(np.vectorize(raw_id.get, otypes=[np.uint8])(lab), os.path.join(root, 'labels', f'{i:05d}.png'), 'P')
  return root


def rcs_config(root: str, gta_dir: str):
  cfg = data_config(root, gta_dir, None, size=STORED)
  cfg.num_workers = 0
  cfg.rcs.enabled, cfg.rcs.temperature, cfg.rcs.min_pixels = True, T, MIN_PIXELS
  return cfg


@pytest.fixture(scope='module')
def cfg(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('rcs')
  c = rcs_config(str(tmp / 'data'), write_hand_gta5(str(tmp / 'gta')))
  builders.build('gta5', c.gta5_dir, builders.data_dir_for(c, 'gta5'), STORED)
  return c


@pytest.fixture(scope='module')
def stats(cfg):
  return rcs.split_stats(cfg, 'gta5', 'train')


def take(it, n):
  return [next(it) for _ in range(n)]


def fake_processes(monkeypatch, count, index):
  monkeypatch.setattr(jax, 'process_count', lambda *a, **k: count)
  monkeypatch.setattr(jax, 'process_index', lambda *a, **k: index)


def stored_images(cfg) -> list[np.ndarray]:
  source = pipeline.data_source(cfg, 'gta5', 'train')
  return [np.asarray(pipeline.decode_png(source[i]['image'], 'RGB')) for i in range(len(source))]


# ---- counts, frequencies, probabilities ---------------------------------------------------------------------------


def test_default_min_pixels_is_daformers_3000_scaled_to_the_stored_size():
  assert rcs.default_min_pixels((1052, 1914)) == 3000
  assert rcs.default_min_pixels((128, 256)) == 49  # 3000 * 32768 / 2013528 = 48.8
  assert rcs.default_min_pixels((720, 1280)) == 1373  # 3000 * 921600 / 2013528 = 1373.1
  assert rcs.resolve_min_pixels(0, (128, 256)) == 49 and rcs.resolve_min_pixels(7, (128, 256)) == 7
  with pytest.raises(ValueError, match='data.rcs.min_pixels'):
    rcs.resolve_min_pixels(-1, (128, 256))


def test_counts_are_the_pixels_of_each_class_in_each_image(cfg):
  np.testing.assert_array_equal(rcs.load_counts(cfg, 'gta5', 'train'), expected_counts())


def test_probabilities_follow_the_formula(stats):
  counts = expected_counts()
  f = counts.sum(axis=0) / counts.sum()  # share of labelled pixels (the ignored row is not counted)
  drawable = (counts > MIN_PIXELS).any(axis=0)
  w = np.exp((1.0 - f) / T) * drawable  # exp(<= 100) < 3e43: no overflow in float64, no shift needed
  p = w / w.sum()
  # float64: each p is a few exps, divisions and a 19-term sum away from exact, each rounding <= 2**-53 relative:
  # well under 1e-13 relative; 1e-12 leaves margin and is still far below any formula error.
  np.testing.assert_allclose(stats.frequencies, f, rtol=1e-12, atol=0)
  np.testing.assert_allclose(stats.probabilities, p, rtol=1e-12, atol=0)
  assert stats.min_pixels == MIN_PIXELS and stats.temperature == T
  np.testing.assert_array_equal(stats.classes, np.flatnonzero(drawable))
  assert TRAIN in stats.never_drawn and PERSON in stats.classes
  for c in range(labels.NUM_CLASSES):
    np.testing.assert_array_equal(stats.images[c], np.flatnonzero(counts[:, c] > MIN_PIXELS))
  np.testing.assert_array_equal(stats.images[PERSON], [1])  # image 2 has exactly MIN_PIXELS: not enough


def test_classes_never_drawn_are_logged(cfg, caplog):
  with caplog.at_level(logging.WARNING):
    rcs.split_stats(cfg, 'gta5', 'train')
  warned = [r.getMessage() for r in caplog.records if 'never draws' in r.getMessage()]
  assert len(warned) == 1 and 'train' in warned[0] and 'person' not in warned[0]


def test_no_drawable_class_is_a_clear_error():
  with pytest.raises(builders.DatasetError, match='Lower data.rcs.min_pixels'):
    rcs.rare_class_stats(expected_counts(), T, min_pixels=10**6)
  with pytest.raises(ValueError, match='data.rcs.temperature'):
    rcs.rare_class_stats(expected_counts(), 0.0, MIN_PIXELS)


# ---- the draws ----------------------------------------------------------------------------------------------------


def test_drawn_classes_follow_p_and_images_hold_the_class(stats):
  # T=0.01 makes p nearly one-hot on the rarest class; T=0.1 spreads it so the test sees several classes.
  wide = rcs.rare_class_stats(stats.counts, 0.1, MIN_PIXELS)
  n = 20000
  sampler = rcs.RareClassSampler(wide, seed=3)
  draws = [sampler.draw(i)[:2] for i in range(n)]
  classes = np.array([c for c, _ in draws])
  for c, image in draws:
    assert wide.counts[image, c] > MIN_PIXELS
  # Each class count is Binomial(n, p_c): within 5 standard deviations (+1 for the discreteness) unless a
  # 1-in-1.7-million event happened, for each of the 19 classes.
  k = np.bincount(classes, minlength=labels.NUM_CLASSES)
  p = wide.probabilities
  assert (np.abs(k - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1).all(), (k, n * p)
  assert (k[wide.never_drawn] == 0).all() and (p[wide.classes] > 0.01).sum() >= 3  # several classes really drawn
  # Given its class, the image is uniform over that class's list: Binomial(k_c, 1 / len(list)) per image.
  for c in wide.classes:
    images = np.array([im for cc, im in draws if cc == c])
    m, q = len(images), 1.0 / len(wide.images[c])
    per_image = np.array([(images == j).sum() for j in wide.images[c]])
    assert per_image.sum() == m
    assert (np.abs(per_image - m * q) <= 5 * math.sqrt(m * q * (1 - q)) + 1).all(), (c, per_image)


def test_same_seed_same_draws_other_seed_other_draws(stats):
  keys = lambda seed: [rcs.RareClassSampler(stats, seed)[i].record_key for i in range(200)]
  assert keys(5) == keys(5)
  assert keys(5) != keys(6)
  a, b = rcs.RareClassSampler(stats, 5), rcs.RareClassSampler(stats, 5)
  assert a.draw(1234)[:2] == b.draw(1234)[:2]  # any index alone, with no earlier draws: stateless
  assert a[7].rng.integers(2**62) == b[7].rng.integers(2**62)  # the record's rng (the crop's) too


def test_sampler_bounds_and_repr(stats):
  s = rcs.RareClassSampler(stats, 1, num_epochs=2)
  assert len(s) == 2 * len(PARTS)
  with pytest.raises(IndexError):
    s[len(s)]
  assert repr(s) == repr(rcs.RareClassSampler(stats, 1, num_epochs=2)) != repr(rcs.RareClassSampler(stats, 2))


# ---- through the train loader -------------------------------------------------------------------------------------


def test_loader_yields_the_drawn_images(cfg, stats):
  images = stored_images(cfg)
  it = pipeline.train_loader(cfg, 'gta5', 'train', 4, seed=9, shape=STORED, rare_class_sampling=True)
  got = np.concatenate([b['image'] for b in take(it, 3)])  # [12, 16, 32, 3]
  sampler = rcs.RareClassSampler(stats, 9)
  expected = np.stack([images[sampler.draw(i)[1]] for i in range(12)])
  np.testing.assert_array_equal(got, expected)


def test_without_the_flag_or_the_field_the_loader_shuffles_as_before(cfg):
  plain = cfg.copy_and_resolve_references()
  plain.rcs.enabled = False
  old = cfg.copy_and_resolve_references()
  del old['rcs']  # a config from before the field existed
  expected = take(pipeline.train_loader(plain, 'gta5', 'train', 2, seed=4, shape=STORED), 5)
  for c, flag in ((cfg, False), (old, True), (plain, True)):
    got = take(pipeline.train_loader(c, 'gta5', 'train', 2, seed=4, shape=STORED, rare_class_sampling=flag), 5)
    for x, y in zip(got, expected):
      np.testing.assert_array_equal(x['image'], y['image'])
  rare = take(pipeline.train_loader(cfg, 'gta5', 'train', 2, seed=4, shape=STORED, rare_class_sampling=True), 5)
  assert any(not np.array_equal(x['image'], y['image']) for x, y in zip(rare, expected))


@pytest.mark.parametrize('workers', [0, 2])
def test_resume_from_saved_state_gives_the_same_batches(cfg, workers):
  crop = cfg.copy_and_resolve_references()
  crop.resize_mode = 'crop'  # the crop position comes from the record's generator too
  make = lambda: pipeline.train_loader(crop, 'gta5', 'train', 2, seed=11, shape=(8, 16), num_workers=workers,
                                       rare_class_sampling=True)
  it = make()
  take(it, 3)
  state = json.loads(json.dumps(pipeline.get_state(it)))  # as a JSON checkpoint stores it
  expected = take(it, 6)
  del it
  restored = make()
  pipeline.set_state(restored, state)
  for x, y in zip(take(restored, 6), expected):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def test_processes_draw_their_own_sequences(cfg, stats, monkeypatch):
  images, sampler = stored_images(cfg), rcs.RareClassSampler(stats, 3)
  seen = []
  for index in range(2):
    with monkeypatch.context() as m:
      fake_processes(m, 2, index)
      it = pipeline.train_loader(cfg, 'gta5', 'train', 4, seed=3, shape=STORED, rare_class_sampling=True)
      got = np.concatenate([b['image'] for b in take(it, 10)])  # 10 batches of 2 per process
    # process `index` reads its rows of each global batch of 4: global indices 4 s + 2 index + {0, 1}
    expected = np.stack([images[sampler.draw(4 * (k // 2) + 2 * index + k % 2)[1]] for k in range(20)])
    np.testing.assert_array_equal(got, expected)
    seen.append(got)
  assert not np.array_equal(seen[0], seen[1])


# ---- the cache beside the build -----------------------------------------------------------------------------------


def test_counts_are_cached_beside_the_build_and_recounted_when_it_changes(tmp_path, monkeypatch):
  gta = write_hand_gta5(str(tmp_path / 'gta'))
  c = rcs_config(str(tmp_path / 'data'), gta)
  builder = builders.build('gta5', gta, builders.data_dir_for(c, 'gta5'), STORED)
  first = rcs.load_counts(c, 'gta5', 'train')
  path = rcs.stats_path(builder, 'train')
  assert os.path.dirname(path) == os.fspath(builder.data_dir) and os.path.isfile(path)
  real_count = rcs.class_pixel_counts
  calls = []
  monkeypatch.setattr(rcs, 'class_pixel_counts', lambda *a, **k: calls.append(1) or real_count(*a, **k))
  np.testing.assert_array_equal(rcs.load_counts(c, 'gta5', 'train'), first)
  assert not calls  # read from the cache
  # New raw labels -> prepare rebuilds -> the counts are those of the new labels.
  new = LABELS[0].copy()
  new[1] = CAR  # row 1 of image 1: 32 more car pixels, 32 fewer road (then building) pixels
  raw = {l.train_id: l.id for l in reversed(labels.LABELS) if 0 <= l.train_id < labels.NUM_CLASSES}
  raw[labels.IGNORE] = 0
  _save(np.vectorize(raw.get, otypes=[np.uint8])(new), os.path.join(gta, 'labels', '00001.png'), 'P')
  os.utime(os.path.join(gta, 'labels', '00001.png'), ns=(1, 1))  # a new mtime even on a coarse clock
  builders.build('gta5', gta, builders.data_dir_for(c, 'gta5'), STORED)
  recounted = rcs.load_counts(c, 'gta5', 'train')
  assert calls
  np.testing.assert_array_equal(recounted[0], [int((new == k).sum()) for k in range(labels.NUM_CLASSES)])
  np.testing.assert_array_equal(recounted[1:], first[1:])
  # A damaged cache is counted again, not trusted.
  with open(path, 'w') as f:
    f.write('{not json')
  np.testing.assert_array_equal(rcs.load_counts(c, 'gta5', 'train'), recounted)


# ---- the real tiny benchmark and the trainer ----------------------------------------------------------------------


def test_trainer_samples_rare_classes_of_the_source_only(tmp_path, monkeypatch):
  root = str(tmp_path / 'data')
  config = tiny_config(root, 'adv', **{'data.rcs.enabled': True, 'model.name': TINY_MODEL,
                                       'train.num_steps': 2, 'data.synthetic.num_cityscapes_val': 2})
  app.run(config, mode='prepare')
  # The counts of the generated source agree with its raw label files read independently (raw = stored size).
  counts = rcs.load_counts(config.data, 'gta5', 'train')
  source = pipeline.data_source(config.data, 'gta5', 'train')
  gta = os.path.join(root, 'synthetic', 'gta5')
  for i in range(len(source)):
    name = source[i]['name']
    name = name.decode() if isinstance(name, bytes) else name
    raw = np.asarray(Image.open(os.path.join(gta, 'labels', os.path.basename(name))))
    ids = independent_train_ids(raw)
    np.testing.assert_array_equal(counts[i], [(ids == c).sum() for c in range(labels.NUM_CLASSES)])
  assert rcs.default_min_pixels(TINY) == 6  # 3000 * 4096 / 2013528 = 6.1
  calls = {}
  real = pipeline.train_loader

  def spy(data_config, dataset, *args, rare_class_sampling=False, **kwargs):
    calls[dataset] = rare_class_sampling
    return real(data_config, dataset, *args, rare_class_sampling=rare_class_sampling, **kwargs)

  monkeypatch.setattr(pipeline, 'train_loader', spy)
  result = app.run(config, workdir=str(tmp_path / 'run'))
  assert calls == {'gta5': True, 'cityscapes': False}
  assert math.isfinite(result['miou'])
