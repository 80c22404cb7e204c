"""Multi-band transfer and self-training: thresholds from streaming histograms against FDA's and CBST's rules on all
confidences, the agreement rule, the cap, ignored pixels, the written Cityscapes layout, the three stages end to end on
tiny runs (FDA's rule, and CBST's feeding a self-training run), image selection (`mbt.select`: only the selected images
in the folder and its build; 'all' as before), and the pseudo-label quality script."""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import fda as fda_config
from rtda_jax import app, labels, parallel, select, selftrain
from rtda_jax.data import builders, pipeline
from rtda_jax.methods import fda
from tests.script_utils import load_benchmark_script
from tests.test_fda import TINY_MODEL
from tests.trainer_utils import read_eval, tiny_config

TINY_RUN = {'model.name': TINY_MODEL, 'train.num_steps': 4}
# A confidence v <= 1 goes to bin floor(fl32(v * num_bins)); the float32 product is within 2^-24 * num_bins of
# v * num_bins, so a threshold's lower bin edge lies in [v - 1/num_bins - 2^-24, v + 2^-24]; its float32 cast, used
# in the comparisons, moves it by at most 2^-24 more (values <= 1). Hence 1/num_bins below and 2^-23 either side.
FP32_SLACK = 2.0 ** -23


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


def cbst_rule(preds: np.ndarray, confidence: np.ndarray, portion: float, cap: float,
              num_classes: int = 19) -> np.ndarray:
  """CBST's kc_parameters on every confidence at once: sort descending, take position floor(n * p) (1-based), else 1."""
  out = np.ones(num_classes)
  for c in range(num_classes):
    x = np.sort(confidence[preds == c])[::-1]
    selected = int(math.floor(len(x) * portion))
    if selected:
      out[c] = min(x[selected - 1], cap)
  return out


def random_ensemble(num_members=3, num_images=6, shape=(12, 10), seed=0):
  """Members' softmax, a list of float32 [N, H, W, 19]: six classes share most of the mass, the members scatter around
  a common logit. Class 13 is confident (its top fifth lies above the cap), class 17 wins two pixels only; class 1 only
  leads a weak four-way tie (rows 3-5), so its CBST threshold is low, and is a close second to class 5 in rows 6-8:
  there CBST's class-normalised argmax picks class 1."""
  rng = np.random.default_rng(seed)
  classes = [0, 1, 2, 5, 8, 13]
  common = rng.normal(0.0, 1.5, (num_images, *shape, len(classes)))
  noise = np.ones(common.shape)
  common[..., 1] -= 4.0
  common[:, 3:6] = [-1.0, 2.2, 2.0, 2.0, 2.0, -1.0]
  common[:, 6:9] = [-1.0, 1.6, -1.0, 2.0, -1.0, -1.0]
  common[:, 9:, :, 3] += 3.0  # class 5 is confident elsewhere: a high CBST threshold
  noise[:, 3:9] = 0.2
  probs = []
  for _ in range(num_members):
    logits = np.full((num_images, *shape, 19), -3.0)
    logits[..., classes] = common + rng.normal(0.0, 1.0, common.shape) * noise
    logits[:, :3, :, 13] += 6.0
    logits[0, -1, :2, 17] = 12.0
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs.append((e / e.sum(-1, keepdims=True)).astype(np.float32))
  return probs


def mbt_config(rule: str, num_bins: int):
  config = fda_config.get_config('mbt')
  config.mbt.rule, config.mbt.num_bins = rule, num_bins
  return config


def two_passes(probs, config, batch_size=4):
  """The pipeline's two passes on an ensemble output, in batches (the last one padded): (thresholds, labels)."""
  rule = config.mbt.rule
  scores = jax.jit(selftrain.ensemble_scores, static_argnums=2)
  hist_fn = jax.jit(selftrain.confidence_histogram, static_argnums=(3, 4))
  n = len(probs[0])
  batches = []
  for start in range(0, n, batch_size):
    pad = batch_size - len(probs[0][start:start + batch_size])
    batches.append(([np.concatenate([p[start:start + batch_size], np.repeat(p[:1], pad, 0)]) for p in probs],
                    np.arange(batch_size) < batch_size - pad))
  hist = np.zeros((19, config.mbt.num_bins), np.int64)
  for members, valid in batches:
    preds, confidence, _ = scores(members, None, False)
    hist += np.asarray(hist_fn(preds, confidence, jnp.asarray(valid), 19, config.mbt.num_bins))
  assert hist.sum() == np.prod(probs[0].shape[:3])
  thresholds = selftrain.rule_thresholds(hist, config)
  out = []
  for members, valid in batches:
    preds, score, agree = scores(members, thresholds if rule == 'cbst' else None, rule == 'agreement')
    agree = None if agree is None else np.asarray(agree)[valid]
    out.append(selftrain.select_labels(rule, np.asarray(preds)[valid], np.asarray(score)[valid], thresholds, agree))
  return thresholds, np.concatenate(out)


def check_thresholds(got, exact, num_bins):
  """Each threshold is the lower edge of the bin holding the exact value (FP32_SLACK: float32 rounding)."""
  assert np.all(got <= exact + FP32_SLACK) and np.all(exact - got <= 1.0 / num_bins + FP32_SLACK), (got, exact)


@pytest.mark.parametrize('num_bins', [1000, 10000])
@pytest.mark.parametrize('rule', ['fda', 'agreement'])
def test_fda_and_agreement_rules_match_brute_force_within_one_bin(rule, num_bins):
  probs = random_ensemble()
  mean = functools.reduce(np.add, probs) / len(probs)  # the ensemble's float32 mean, in the order the code sums
  preds, confidence = mean.argmax(-1), mean.max(-1)
  exact = fda_rule(preds, confidence)
  thresholds, got = two_passes(probs, mbt_config(rule, num_bins))
  check_thresholds(thresholds, exact, num_bins)
  keep = confidence >= exact[preds]
  if rule == 'agreement':
    agree = np.all([p.argmax(-1) == preds for p in probs], axis=0)
    assert 0 < (keep & ~agree).sum() < keep.sum()  # the members disagree on some pixels FDA's rule keeps
    keep &= agree
  kept = got != labels.IGNORE
  np.testing.assert_array_equal(got[kept], preds[kept])
  differ = kept != keep  # only pixels whose confidence is within a bin of their class's threshold
  assert np.all(np.abs(confidence[differ] - exact[preds[differ]]) <= 1.0 / num_bins + FP32_SLACK)
  assert 0 < keep.sum() < keep.size


@pytest.mark.parametrize('num_bins', [1000, 10000])
def test_cbst_rule_matches_brute_force_within_one_bin(num_bins):
  probs = random_ensemble()
  mean = functools.reduce(np.add, probs) / len(probs)
  preds, confidence = mean.argmax(-1), mean.max(-1)
  config = mbt_config('cbst', num_bins)
  exact = cbst_rule(preds, confidence, config.mbt.cbst_portion, config.mbt.max_threshold)
  assert exact[17] == 1.0 and exact[13] == pytest.approx(0.9) and np.all(exact[[3, 4, 6, 7]] == 1.0)
  thresholds, got = two_passes(probs, config)
  check_thresholds(thresholds, exact, num_bins)
  kept = got != labels.IGNORE

  # CBST's label_selection with our thresholds, in NumPy: the class-normalised argmax, kept where max p_c / k_c >= 1.
  weighted = mean / thresholds.astype(np.float32)
  np.testing.assert_array_equal(got, np.where(weighted.max(-1) >= 1, weighted.argmax(-1), labels.IGNORE))
  assert np.sum(kept & (got != preds)) > 0  # the class-normalised argmax differs from the plain one on some pixels

  # Against CBST with the exact thresholds (float64): kept masks differ only where a probability is within a bin of
  # its class's threshold; labels, only where the two best normalised probabilities are within the bin's relative
  # size (a threshold moved by d moves p_c / k_c by a factor within 1 +- d / k_c).
  exact_weighted = mean.astype(np.float64) / exact
  exact_keep = exact_weighted.max(-1) >= 1
  differ = kept != exact_keep
  margin = (mean - exact).max(-1)  # >= 0 exactly where CBST keeps the pixel
  assert np.all(np.abs(margin[differ]) <= 1.0 / num_bins + FP32_SLACK)
  both = kept & exact_keep
  ours = np.take_along_axis(exact_weighted[both], got[both].astype(np.int64)[:, None], -1)[:, 0]
  r = (1.0 / num_bins + 2 * FP32_SLACK) / thresholds.min()
  assert np.all(ours >= exact_weighted[both].max(-1) * (1 - 2 * r))
  assert 0 < exact_keep.sum() < exact_keep.size


def test_cbst_thresholds_take_the_top_portion_of_each_class():
  hist = np.zeros((19, 100), np.int64)
  hist[4, 10:20] = 1  # ten pixels, confidences 0.10 ... 0.19
  hist[7, 50:54] = 1  # four pixels: floor(4 * 0.2) = 0 selected
  hist[9, 95:100] = 1  # five pixels, the top one 0.99
  k = selftrain.cbst_thresholds(hist, 0.2, 0.9)
  assert k[4] == pytest.approx(0.18)  # descending 0.19, 0.18, ...: position floor(10 * 0.2) = 2
  assert k[7] == 1.0 and k[9] == pytest.approx(0.9) and k[0] == 1.0  # CBST's initial 1; the cap; absent class
  k = selftrain.cbst_thresholds(hist, 1.0, 1.0)
  assert k[4] == pytest.approx(0.10) and k[7] == pytest.approx(0.50) and k[9] == pytest.approx(0.95)
  with pytest.raises(ValueError, match='cbst_portion'):
    selftrain.cbst_thresholds(hist, 0.0)


def test_cbst_labels_a_pixel_by_its_class_normalised_argmax():
  probs = np.zeros((1, 1, 3, 19), np.float32)
  probs[0, 0, :, :2] = [[0.6, 0.4], [0.8, 0.2], [0.95, 0.05]]
  k = np.ones(19)
  k[:2] = [0.9, 0.3]
  # p / k: [0.67, 1.33] -> class 1, though class 0 is the argmax; [0.89, 0.67] -> neither reaches 1; [1.06, 0.17] -> 0.
  preds, score, _ = selftrain.ensemble_scores([jnp.asarray(probs)], k)
  got = selftrain.select_labels('cbst', np.asarray(preds), np.asarray(score), k)
  np.testing.assert_array_equal(got, [[[1, 255, 0]]])
  preds, confidence, _ = selftrain.ensemble_scores([jnp.asarray(probs)])  # the same thresholds by FDA's rule
  np.testing.assert_array_equal(selftrain.select_labels('fda', np.asarray(preds), np.asarray(confidence), k),
                                [[[255, 255, 0]]])


def test_agreement_drops_a_pixel_where_one_member_disagrees():
  def member(classes, confidence):
    p = np.full((1, 1, len(classes), 19), (1 - confidence) / 18, np.float32)
    p[0, 0, np.arange(len(classes)), classes] = confidence
    return jnp.asarray(p)
  probs = [member([2, 2], 0.95), member([2, 2], 0.95), member([2, 5], 0.6)]  # member 3 says class 5 at pixel 1
  thresholds = np.full(19, 0.5)
  preds, confidence, agree = selftrain.ensemble_scores(probs, agreement=True)
  np.testing.assert_array_equal(np.asarray(preds), [[[2, 2]]])  # the ensemble still says 2, confidently
  assert float(confidence[0, 0, 1]) > 0.6
  args = np.asarray(preds), np.asarray(confidence), thresholds, np.asarray(agree)
  np.testing.assert_array_equal(selftrain.select_labels('fda', *args), [[[2, 2]]])
  np.testing.assert_array_equal(selftrain.select_labels('agreement', *args), [[[2, 255]]])


def test_a_wrong_rule_or_portion_is_an_error_that_names_the_field():
  with pytest.raises(ValueError, match='mbt.rule'):
    selftrain.check_rule(mbt_config('percentile', 10000))
  config = mbt_config('cbst', 10000)
  config.mbt.cbst_portion = 1.5
  with pytest.raises(ValueError, match='mbt.cbst_portion'):
    selftrain.check_rule(config)


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


@pytest.fixture(scope='module')
def member_runs(tmp_path_factory):
  """Stage 1 of the end-to-end tests: (data root, runs folder, workdirs) of two tiny FDA runs with different betas."""
  root = str(tmp_path_factory.mktemp('data'))
  runs = str(tmp_path_factory.mktemp('runs'))
  members = []
  for beta in ('b005', 'b009'):
    workdir = os.path.join(runs, beta)
    app.run(tiny_config(root, 'fda', beta, **TINY_RUN), workdir=workdir)
    members.append(workdir)
  return root, runs, members


def test_three_stages_end_to_end(member_runs):
  root, runs, members = member_runs
  tiny = TINY_RUN
  # Stage 2: the ensemble's evaluation and pseudo-labels.
  mbt_dir = os.path.join(runs, 'mbt')
  config = tiny_config(root, 'fda', 'mbt', **tiny, **{'mbt.workdirs': ','.join(members), 'mbt.name': 'tiny'})
  out = app.run(config, workdir=mbt_dir, mode='pseudolabel')
  result = read_eval(mbt_dir)
  assert result['split'] == 'val' and result['num_images'] == 8 and result == out['eval']
  info = json.load(open(os.path.join(mbt_dir, 'pseudolabels.json')))
  assert [m['workdir'] for m in info['members']] == members and info['num_images'] == 16
  assert info['rule'] == 'fda' and info['percentile'] == 0.66 and info['max_threshold'] == 0.9

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


def test_cbst_pseudo_labels_end_to_end_feed_self_training(member_runs):
  root, runs, members = member_runs
  mbt_dir = os.path.join(runs, 'mbt_cbst')
  config = tiny_config(root, 'fda', 'mbt', **TINY_RUN, **{'mbt.workdirs': ','.join(members), 'mbt.name': 'tiny_cbst',
                                                          'mbt.rule': 'cbst'})
  out = app.run(config, workdir=mbt_dir, mode='pseudolabel')
  info = json.load(open(os.path.join(mbt_dir, 'pseudolabels.json')))
  assert info['rule'] == 'cbst' and info['portion'] == 0.2 and info['num_images'] == 16
  thresholds = np.array([info['thresholds'][n] for n in labels.CLASS_NAMES])
  predicted = np.array([info['predicted_pixels_per_class'][n] for n in labels.CLASS_NAMES])
  selected = np.floor(predicted * 0.2)
  assert np.all((thresholds == 1.0) == (selected == 0)) and np.all(thresholds[selected > 0] <= 0.9)
  # The top fifth of each class's pixels reaches its threshold, so CBST keeps at least that many (relabelled or not).
  assert sum(info['pixels_per_class'].values()) >= selected.sum() > 0
  pseudo = out['pseudo']['pseudo_dir']
  assert pseudo == os.path.join(root, 'pseudo', 'tiny_cbst')

  st_dir = os.path.join(runs, 'st_cbst')
  st = tiny_config(root, 'fda', 'b009,selftrain', **{**TINY_RUN, 'train.num_steps': 2, 'selftrain.pseudo_dir': pseudo})
  assert app.run(st, workdir=st_dir)['num_images'] == 8
  logged = [m for m in map(json.loads, open(os.path.join(st_dir, 'metrics.jsonl'))) if 'loss' in m]
  assert logged and all(np.isfinite(m['loss_pseudo']) and m['loss_pseudo'] > 0 for m in logged)

  # Round 2: pseudo-labels from the self-trained run, with a larger portion.
  r2 = tiny_config(root, 'fda', 'mbt', **TINY_RUN, **{'mbt.workdirs': st_dir, 'mbt.name': 'tiny_cbst_r2',
                                                      'mbt.rule': 'cbst', 'mbt.cbst_portion': 0.4})
  app.run(r2, workdir=os.path.join(runs, 'mbt_cbst_r2'), mode='pseudolabel')
  info = json.load(open(os.path.join(runs, 'mbt_cbst_r2', 'pseudolabels.json')))
  assert info['members'] == [{'workdir': st_dir, 'step': 2}] and info['portion'] == 0.4
  selected = np.floor(np.array([info['predicted_pixels_per_class'][n] for n in labels.CLASS_NAMES]) * 0.4)
  assert sum(info['pixels_per_class'].values()) >= selected.sum() > 0


def test_only_the_selected_images_are_pseudo_labelled_and_built(member_runs):
  root, runs, members = member_runs
  k = 5
  mbt_dir = os.path.join(runs, 'mbt_fd')
  common = {**TINY_RUN, 'mbt.workdirs': ','.join(members), 'mbt.name': 'tiny_fd'}
  st = tiny_config(root, 'fda', 'b009,selftrain', **{**TINY_RUN, 'selftrain.pseudo_dir': f'{root}/pseudo/tiny_fd'})
  data = fda.pseudo_data_config(st)
  # First every image under the same name, built: the selection must replace the folder and its build.
  app.run(tiny_config(root, 'fda', 'mbt', **common), workdir=os.path.join(runs, 'mbt_fd_all'), mode='pseudolabel')
  builders.prepare(data)
  assert len(pipeline.data_source(data, 'cityscapes', 'train')) == 16
  config = tiny_config(root, 'fda', 'mbt', **common, **{
      'mbt.select': 'fd', 'mbt.select_k': k, 'mbt.select_reference': 'target:val', 'fid.feature_workdir': members[0],
      'fid.batch_size': 4})
  out = app.run(config, workdir=mbt_dir, mode='pseudolabel')
  assert out['pseudo']['pseudo_dir'] == f'{root}/pseudo/tiny_fd'
  pseudo = out['pseudo']['pseudo_dir']
  record = json.load(open(os.path.join(pseudo, select.SELECTION_FILE)))
  assert record == json.load(open(os.path.join(mbt_dir, select.SELECTION_FILE)))
  names, distances = [s['name'] for s in record['selected']], [s['distance'] for s in record['selected']]
  assert (record['rule'], record['k'], record['pool_size'], len(set(names))) == ('fd', k, 16, k)
  assert distances == sorted(distances) and record['network'].startswith(f'{TINY_MODEL} of {members[0]}')

  found = builders.find_examples('cityscapes', pseudo)
  assert [e.name for e in found['train']] == sorted(names)  # the unselected images are absent, labels and images
  for sub in ('leftImg8bit', 'gtFine'):  # no other file of the split either
    assert sum(len(n) for _, _, n in os.walk(os.path.join(pseudo, sub, 'train'))) == k
  assert len(found['val']) == 8
  info = json.load(open(os.path.join(pseudo, selftrain.INFO_FILE)))
  assert info['num_images'] == k and info['selection'] == {key: v for key, v in record.items() if key != 'selected'}
  assert out['pseudo']['selection'] == info['selection']
  # The thresholds come from the selected images alone: each pixel of the k 64x64 images counted once.
  assert sum(info['predicted_pixels_per_class'].values()) == k * 64 * 64

  # The self-training preset's dataset is rebuilt from the folder: k training images.
  builders.prepare(data)
  assert len(pipeline.data_source(data, 'cityscapes', 'train')) == k


def test_select_all_writes_what_selecting_the_whole_split_writes(member_runs):
  # 'all' (the default) is the pseudo-labelling of before the selection step; choosing all 16 images by a rule must
  # write the same bytes, plus the record of the selection.
  root, runs, members = member_runs
  common = {**TINY_RUN, 'mbt.workdirs': ','.join(members)}
  out_all = app.run(tiny_config(root, 'fda', 'mbt', **common, **{'mbt.name': 'tiny_all'}),
                    workdir=os.path.join(runs, 'mbt_all'), mode='pseudolabel')
  out_16 = app.run(tiny_config(root, 'fda', 'mbt', **common, **{
      'mbt.name': 'tiny_random16', 'mbt.select': 'random', 'mbt.select_k': 16}),
                   workdir=os.path.join(runs, 'mbt_random16'), mode='pseudolabel')
  a, b = out_all['pseudo']['pseudo_dir'], out_16['pseudo']['pseudo_dir']
  assert not os.path.exists(os.path.join(runs, 'mbt_all', select.SELECTION_FILE))

  def files(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names)

  assert files(b) == sorted(files(a) + [select.SELECTION_FILE])
  for name in files(a):
    if name != selftrain.INFO_FILE:
      assert open(os.path.join(a, name), 'rb').read() == open(os.path.join(b, name), 'rb').read(), name
  info_a = json.load(open(os.path.join(a, selftrain.INFO_FILE)))
  info_b = json.load(open(os.path.join(b, selftrain.INFO_FILE)))
  assert set(info_a) == {'split', 'raw_dir', 'rule', 'percentile', 'max_threshold', 'num_bins', 'thresholds',
                         'predicted_pixels_per_class', 'num_images', 'kept_fraction', 'pixels_per_class',
                         'ignored_pixels'}  # the keys of before the selection step
  assert info_b.pop('selection')['k'] == 16 and info_a == info_b and info_a['num_images'] == 16


def test_pseudo_label_quality_reports_per_class_precision(tmp_path):
  script = load_benchmark_script('pseudo_label_quality')
  name = 'gtFine/train/x/x_000000_000019_gtFine_labelIds.png'
  truth = np.array([[0, 0, 0, 13], [13, 13, 2, 255]], np.uint8)  # train ids: road, car, building, unlabelled
  pseudo = np.array([[0, 0, 13, 13], [13, 255, 13, 0]], np.uint8)  # car on road and building; ignored; on unlabelled
  selftrain.write_label(str(tmp_path / 'truth' / name), truth)
  selftrain.write_label(str(tmp_path / 'pseudo' / name), pseudo)
  json.dump({'rule': 'cbst', 'portion': 0.2, 'thresholds': {'car': 0.5}},
            open(tmp_path / 'pseudo' / selftrain.INFO_FILE, 'w'))
  q = script.quality(str(tmp_path / 'pseudo'), str(tmp_path / 'truth'))
  # Pixels labelled in both: road 2/2 right; car 2 right of 4 (one road, one building).
  assert q['per_class']['road']['precision'] == 1.0 and q['per_class']['car']['precision'] == 0.5
  assert set(q['per_class']) == {'road', 'car'} and q['accuracy'] == pytest.approx(4 / 6)
  assert q['kept_fraction'] == pytest.approx(6 / 7) and q['info']['rule'] == 'cbst'
  script.main([str(tmp_path / 'pseudo'), str(tmp_path / 'truth')])  # prints the table
