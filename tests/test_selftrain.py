"""Multi-band transfer and self-training: thresholds from streaming histograms against FDA's rule on all confidences,
the cap, ignored pixels, the written Cityscapes layout, and the three stages end to end on tiny runs."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from rtda_jax import app, labels, parallel, selftrain
from rtda_jax.data import builders
from rtda_jax.methods import fda
from tests.test_fda import TINY_MODEL
from tests.trainer_utils import read_eval, tiny_config


def fda_rule(preds: np.ndarray, confidence: np.ndarray, num_classes: int = 19, percentile: float = 0.66,
             cap: float = 0.9) -> np.ndarray:
  """FDA's getSudoLabel_multi.py on every confidence at once: sort, take index round(n * 0.66), cap at 0.9."""
  out = []
  for c in range(num_classes):
    x = np.sort(confidence[preds == c])
    out.append(0.0 if len(x) == 0 else x[min(int(np.round(len(x) * percentile)), len(x) - 1)])
  return np.minimum(np.array(out), cap)


def random_predictions(num_images=6, shape=(16, 20), seed=0):
  rng = np.random.default_rng(seed)
  preds = rng.choice([0, 1, 2, 5, 8, 13], size=(num_images, *shape)).astype(np.uint8)  # other classes absent
  confidence = rng.uniform(0.06, 0.95, size=preds.shape).astype(np.float32)
  confidence[preds == 8] = rng.uniform(0.92, 1.0, size=int((preds == 8).sum()))  # all above the cap
  confidence[preds == 13] = 1.0  # the top of the range falls in the last bin
  return preds, confidence


@pytest.mark.parametrize('num_bins', [1000, 10000])
def test_streaming_thresholds_match_fdas_rule_within_one_bin(num_bins):
  preds, confidence = random_predictions()
  hist = np.zeros((19, num_bins), np.int64)
  fn = jax.jit(selftrain.confidence_histogram, static_argnums=(3, 4))
  for start in range(0, 6, 4):  # batches of 4, the last one padded with invalid examples
    p, c = preds[start:start + 4], confidence[start:start + 4]
    valid = np.arange(4) < len(p)
    pad = 4 - len(p)
    p = np.concatenate([p, np.full((pad, *p.shape[1:]), 3, np.uint8)])  # padding predicted as class 3: not counted
    c = np.concatenate([c, np.full((pad, *c.shape[1:]), 0.5, np.float32)])
    hist += np.asarray(fn(jnp.asarray(p), jnp.asarray(c), jnp.asarray(valid), 19, num_bins))
  assert hist.sum() == preds.size and hist[3].sum() == 0
  expected = fda_rule(preds, confidence)
  got = selftrain.class_thresholds(hist, 0.66, 0.9)
  assert np.all(got <= expected + 1e-12) and np.all(expected - got < 1.0 / num_bins + 1e-9), (got, expected)


def test_thresholds_are_capped_at_0_9_and_absent_classes_get_0():
  preds, confidence = random_predictions()
  hist = np.asarray(selftrain.confidence_histogram(jnp.asarray(preds), jnp.asarray(confidence),
                                                   jnp.ones(len(preds), bool), 19, 1000))
  thresholds = selftrain.class_thresholds(hist, 0.66, 0.9)
  assert thresholds[8] == pytest.approx(0.9) and thresholds[13] == pytest.approx(0.9)
  assert np.all(thresholds[[3, 4, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 18]] == 0.0)
  assert 0.06 < thresholds[0] < 0.9
  uncapped = selftrain.class_thresholds(hist, 0.66, 1.0)
  assert uncapped[13] == pytest.approx(0.999) and uncapped[8] > 0.9


def test_threshold_of_a_single_pixel_is_its_own_confidence():
  hist = np.zeros((19, 100), np.int64)
  hist[4, 37] = 1  # FDA would index x[round(0.66)] = x[1], past the end; we take the last
  assert selftrain.class_thresholds(hist)[4] == pytest.approx(0.37)


def test_pixels_below_their_class_threshold_become_ignore():
  preds = np.array([[0, 0, 1, 1], [2, 2, 18, 18]], np.uint8)
  confidence = np.array([[0.5, 0.7, 0.2, 0.3], [0.9, 0.95, 0.1, 0.6]], np.float32)
  thresholds = np.zeros(19)
  thresholds[[0, 1, 2, 18]] = [0.6, 0.3, 0.9, 0.6]
  out = selftrain.apply_thresholds(preds, confidence, thresholds)
  np.testing.assert_array_equal(out, [[255, 0, 255, 1], [2, 2, 255, 18]])
  assert out.dtype == np.uint8


def test_labels_are_written_as_cityscapes_label_ids(tmp_path):
  train_ids = np.array([[0, 1, 255], [10, 13, 18]], np.uint8)
  path = str(tmp_path / 'gtFine' / 'train' / 'x' / 'x_000000_000019_gtFine_labelIds.png')
  selftrain.write_label(path, train_ids)
  written = np.asarray(Image.open(path))
  assert Image.open(path).mode == 'L'
  np.testing.assert_array_equal(written, [[7, 8, 0], [23, 26, 33]])  # road, sidewalk, unlabeled; sky, car, bicycle
  np.testing.assert_array_equal(labels.to_train_ids(written), train_ids)
  selftrain.write_label(path, train_ids, size=(6, 4))  # paired with a 6x4 (WxH) raw image: nearest upscaling
  np.testing.assert_array_equal(labels.to_train_ids(np.asarray(Image.open(path))),
                                np.repeat(np.repeat(train_ids, 2, 0), 2, 1))


def test_label_name_follows_the_cityscapes_layout():
  assert (selftrain.label_name('leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png')
          == 'gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png')
  with pytest.raises(ValueError, match='Cityscapes'):
    selftrain.label_name('images/00001.png')


def test_member_workdirs_parses_the_flag():
  config = tiny_config('/tmp/unused', 'fda', 'mbt', **{'mbt.workdirs': 'runs/a, runs/b,,runs/c'})
  assert selftrain.member_workdirs(config) == ['runs/a', 'runs/b', 'runs/c']
  with pytest.raises(ValueError, match='mbt.workdirs'):
    selftrain.member_workdirs(tiny_config('/tmp/unused', 'fda', 'mbt', **{'mbt.workdirs': ''}))


def test_missing_member_run_is_an_error_that_names_it(tmp_path):
  config = tiny_config(str(tmp_path), 'fda', 'mbt', **{'model.name': TINY_MODEL})
  with pytest.raises(FileNotFoundError, match='nothing_here'):
    selftrain.load_members(config, [str(tmp_path / 'nothing_here')])


def test_three_stages_end_to_end(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('data'))
  runs = str(tmp_path_factory.mktemp('runs'))
  tiny = {'model.name': TINY_MODEL, 'train.num_steps': 4}
  # Stage 1: two FDA runs with different betas.
  members = []
  for beta in ('b005', 'b009'):
    workdir = os.path.join(runs, beta)
    app.run(tiny_config(root, 'fda', beta, **tiny), workdir=workdir)
    members.append(workdir)
  # Stage 2: the ensemble's evaluation and pseudo-labels.
  mbt_dir = os.path.join(runs, 'mbt')
  config = tiny_config(root, 'fda', 'mbt', **tiny, **{'mbt.workdirs': ','.join(members), 'mbt.name': 'tiny'})
  out = app.run(config, workdir=mbt_dir, mode='pseudolabel')
  result = read_eval(mbt_dir)
  assert result['split'] == 'val' and result['num_images'] == 8 and result == out['eval']
  info = json.load(open(os.path.join(mbt_dir, 'pseudolabels.json')))
  assert [m['workdir'] for m in info['members']] == members and info['num_images'] == 16

  pseudo = os.path.join(root, 'pseudo', 'tiny')
  assert out['pseudo']['pseudo_dir'] == pseudo and not os.path.exists(pseudo + '.tmp')
  raw = selftrain.target_raw_dir(config)
  raw_splits = builders.find_examples('cityscapes', raw)
  got_splits = builders.find_examples('cityscapes', pseudo)  # the exact Cityscapes layout, every pair present
  for split in ('train', 'val'):
    assert [e.name for e in got_splits[split]] == [e.name for e in raw_splits[split]]
    for ours, theirs in zip(got_splits[split], raw_splits[split]):
      assert os.path.samefile(ours.image_path, theirs.image_path) or (
          open(ours.image_path, 'rb').read() == open(theirs.image_path, 'rb').read())
      assert os.path.relpath(ours.label_path, pseudo) == os.path.relpath(theirs.label_path, raw)
  for ours, theirs in zip(got_splits['val'], raw_splits['val']):  # val: the real labels, unchanged
    assert open(ours.label_path, 'rb').read() == open(theirs.label_path, 'rb').read()
  allowed = set(labels.TRAIN_ID_TO_LABEL_ID.tolist()) | {0}
  thresholds = np.array([info['thresholds'][n] for n in labels.CLASS_NAMES])
  assert np.all(thresholds <= 0.9)
  ignored = 0
  for ex in got_splits['train']:
    ids = np.asarray(Image.open(ex.label_path))
    assert Image.open(ex.label_path).mode == 'L' and set(np.unique(ids).tolist()) <= allowed
    assert ids.shape == np.asarray(Image.open(ex.image_path)).shape[:2]
    ignored += int((ids == 0).sum())
  assert ignored == info['ignored_pixels'] > 0

  # The ensemble of one model twice is that model: its evaluation equals the run's own eval.json.
  mesh = parallel.make_mesh(1)
  method, variables, _ = selftrain.load_members(config, members[:1])
  twice = selftrain.evaluate_ensemble(method, variables * 2, config, mesh, step=4)
  own = read_eval(members[0])
  assert twice['miou'] == pytest.approx(own['miou']) and twice['per_class_iou'] == pytest.approx(
      own['per_class_iou'])

  # Stage 3: a self-training run on the pseudo-labels.
  st_dir = os.path.join(runs, 'st')
  st = tiny_config(root, 'fda', 'b009,selftrain', **{**tiny, 'train.num_steps': 2, 'selftrain.pseudo_dir': pseudo})
  st_result = app.run(st, workdir=st_dir)
  assert st_result['dataset'] == 'cityscapes' and st_result['num_images'] == 8
  logged = [m for m in map(json.loads, open(os.path.join(st_dir, 'metrics.jsonl'))) if 'loss' in m]
  assert logged and all(np.isfinite(m['loss_pseudo']) and m['loss_pseudo'] > 0 for m in logged)
  built = builders.load_builder(fda.pseudo_data_config(st), 'cityscapes')  # the pseudo folder got its own build
  assert os.path.abspath(pseudo) in json.load(open(os.path.join(os.fspath(built.data_dir), 'source.json')))[
      'raw_dir']
