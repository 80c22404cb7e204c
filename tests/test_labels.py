"""The class table against the official cityscapesscripts package, and the lookup/colour helpers."""

import numpy as np
import pytest

from rtda_jax import labels

official = pytest.importorskip('cityscapesscripts.helpers.labels')


def test_table_matches_official_cityscapesscripts():
  ours = {(l.name, l.id, l.train_id, l.color) for l in labels.LABELS}
  theirs = {(l.name, l.id, l.trainId if l.trainId not in (-1, 255) else 255, tuple(l.color)) for l in official.labels}
  assert ours == theirs


def test_train_classes_in_official_order():
  official_train = sorted((l for l in official.labels if 0 <= l.trainId < 255), key=lambda l: l.trainId)
  assert labels.CLASS_NAMES == tuple(l.name for l in official_train)
  np.testing.assert_array_equal(labels.PALETTE, np.array([l.color for l in official_train], dtype=np.uint8))


def test_lookup_maps_every_raw_id_like_official():
  raw = np.arange(256, dtype=np.uint8)
  expected = np.full(256, 255, dtype=np.uint8)
  for l in official.labels:
    if 0 <= l.id < 256 and 0 <= l.trainId < 255 and not l.ignoreInEval:
      expected[l.id] = l.trainId
  np.testing.assert_array_equal(labels.to_train_ids(raw, labels.CITYSCAPES_TO_TRAIN), expected)
  np.testing.assert_array_equal(labels.to_train_ids(raw, labels.GTA5_TO_TRAIN), expected)


def test_ids_outside_table_become_ignore():
  raw = np.array([[-1, 7, 34], [1000, 33, 255]], dtype=np.int32)
  np.testing.assert_array_equal(labels.to_train_ids(raw), [[255, 0, 255], [255, 18, 255]])


def test_reference_mapping_from_references_md():
  pairs = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
           27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
  for raw_id, train_id in pairs.items():
    assert labels.CITYSCAPES_TO_TRAIN[raw_id] == train_id
  assert int((labels.CITYSCAPES_TO_TRAIN != 255).sum()) == 19
  np.testing.assert_array_equal(labels.TRAIN_ID_TO_LABEL_ID, list(pairs))


def test_colorize_uses_palette_and_black_for_ignore():
  ids = np.array([[0, 13], [255, 18]], dtype=np.uint8)
  rgb = labels.colorize(ids)
  assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
  assert tuple(rgb[0, 0]) == (128, 64, 128)  # road
  assert tuple(rgb[0, 1]) == (0, 0, 142)  # car
  assert tuple(rgb[1, 0]) == (0, 0, 0)
  assert tuple(rgb[1, 1]) == (119, 11, 32)  # bicycle
