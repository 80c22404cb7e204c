"""Confusion matrix and scores: by hand, and against the official Cityscapes evaluator."""

import copy
import math

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from rtda_jax import labels as cs_labels
from rtda_jax import metrics

IGN = 255


def test_confusion_matrix_counts_and_excludes_ignored_pixels():
  labels = np.array([[0, 0, 1, 2], [2, 255, 7, 1]], np.uint8)  # 255 ignored, 7 >= C excluded
  preds = np.array([[0, 1, 1, 2], [0, 2, 0, 1]])
  expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
  cm = metrics.confusion_matrix(preds, labels, num_classes=3)
  assert cm.dtype == jnp.int32
  np.testing.assert_array_equal(cm, expected)


def test_compute_metrics_by_hand():
  cm = np.array([[3, 1, 0],
                 [2, 4, 0],
                 [0, 0, 0]])  # class c absent from both ground truth and prediction
  out = metrics.compute_metrics(cm, ['a', 'b', 'c'])
  assert set(out) == {'miou', 'per_class_iou', 'pixel_accuracy', 'mean_class_accuracy', 'fwiou'}
  iou_a, iou_b = 3 / (3 + 1 + 2), 4 / (4 + 2 + 1)
  assert out['per_class_iou']['a'] == pytest.approx(100 * iou_a)
  assert out['per_class_iou']['b'] == pytest.approx(100 * iou_b)
  assert out['per_class_iou']['c'] is None
  assert out['miou'] == pytest.approx(100 * (iou_a + iou_b) / 2)  # c is left out, not counted as 0
  assert out['pixel_accuracy'] == pytest.approx(100 * 7 / 10)
  assert out['mean_class_accuracy'] == pytest.approx(100 * (3 / 4 + 4 / 6) / 2)
  assert out['fwiou'] == pytest.approx(100 * (0.4 * iou_a + 0.6 * iou_b))


def test_class_only_predicted_has_zero_iou_and_counts_in_miou():
  cm = np.array([[2, 2], [0, 0]])  # class b never in the ground truth but predicted twice
  out = metrics.compute_metrics(cm, ['a', 'b'])
  assert out['per_class_iou'] == {'a': pytest.approx(50.0), 'b': 0.0}
  assert out['miou'] == pytest.approx(25.0)
  assert out['mean_class_accuracy'] == pytest.approx(50.0)  # only classes present in the ground truth


def test_empty_confusion_matrix_gives_none_not_nan():
  out = metrics.compute_metrics(np.zeros((2, 2), np.int64), ['a', 'b'])
  assert out == {'miou': None, 'per_class_iou': {'a': None, 'b': None}, 'pixel_accuracy': None,
                 'mean_class_accuracy': None, 'fwiou': None}


def test_accumulate_is_exact_beyond_int32():
  batch = jnp.array([[2 ** 30, 1], [3, 2 ** 30]], jnp.int32)
  total = None
  for _ in range(4):
    total = metrics.accumulate(total, batch)
  assert total.dtype == np.int64
  np.testing.assert_array_equal(total, [[2 ** 32, 4], [12, 2 ** 32]])
  out = metrics.compute_metrics(total, ['a', 'b'])
  assert out['per_class_iou']['a'] == pytest.approx(100 * 2 ** 32 / (2 ** 32 + 16), rel=1e-12)


def test_accumulate_rejects_an_overflowed_batch():
  with pytest.raises(OverflowError):
    metrics.accumulate(None, np.array([[-5, 0], [0, 1]], np.int32))


def _write_png(path, array: np.ndarray) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array.astype(np.uint8), mode='L').save(path)
  return str(path)


def _official_results(pred_files: list[str], gt_files: list[str], tmp_path) -> dict:
  from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
  args = copy.copy(official.args)  # the module's global argument object, left untouched
  args.evalInstLevelScore = False  # needs instanceIds PNGs; nIoU is not what we compare
  args.evalPixelAccuracy = False
  args.quiet = True
  args.JSONOutput = False
  args.colorized = False
  args.exportFile = str(tmp_path / 'official.json')
  args.predictionPath = str(tmp_path / 'results')
  return official.evaluateImgLists(pred_files, gt_files, args)


def test_matches_official_cityscapes_evaluation(tmp_path):
  rng = np.random.default_rng(42)
  names = cs_labels.CLASS_NAMES
  # Ground truth: label ids of all train classes but 'train' (31) and 'motorcycle' (32), plus ignored ids.
  gt_ids = [l.id for l in cs_labels.TRAIN_LABELS if l.id not in (31, 32)] + [0, 1, 4, 9, 14]
  # Predictions never say 'train' (16) nor 'bus' (15): train is absent from both, motorcycle is only predicted,
  # bus is only in the ground truth.
  pred_train_ids = [t for t in range(19) if t not in (15, 16)]
  pred_files, gt_files, total = [], [], None
  for i in range(3):
    gt = rng.choice(gt_ids, size=(32, 64)).astype(np.uint8)
    gt[:4, :] = 7  # a band of road, so that road is mostly right
    gt_train = cs_labels.to_train_ids(gt)
    pred = np.where((rng.uniform(size=gt.shape) < 0.5) & (gt_train != IGN) & (gt_train != 15), gt_train,
                    rng.choice(pred_train_ids, size=gt.shape))
    stem = f'frankfurt_000000_{i:06d}'
    gt_files.append(_write_png(tmp_path / 'gtFine' / 'val' / 'frankfurt' / f'{stem}_gtFine_labelIds.png', gt))
    pred_label_ids = cs_labels.TRAIN_ID_TO_LABEL_ID[pred]
    pred_files.append(_write_png(tmp_path / 'results' / f'{stem}_leftImg8bit.png', pred_label_ids))
    # Ours: read the same files back, as the evaluation pipeline would.
    gt_read = cs_labels.to_train_ids(np.array(Image.open(gt_files[-1])))
    pred_read = cs_labels.to_train_ids(np.array(Image.open(pred_files[-1])))
    total = metrics.accumulate(total, metrics.confusion_matrix(pred_read[None], gt_read[None]))

  official = _official_results(pred_files, gt_files, tmp_path)
  ours = metrics.compute_metrics(total, names)

  assert ours['per_class_iou']['train'] is None and math.isnan(official['classScores']['train'])
  assert ours['per_class_iou']['motorcycle'] == 0.0 and ours['per_class_iou']['bus'] == 0.0
  for name in names:
    theirs = official['classScores'][name]
    if math.isnan(theirs):
      assert ours['per_class_iou'][name] is None, name
    else:
      assert ours['per_class_iou'][name] == pytest.approx(100 * theirs, rel=1e-6), name
  assert ours['miou'] == pytest.approx(100 * official['averageScoreClasses'], rel=1e-6)
  # The official matrix (label ids) restricted to the evaluated classes is our matrix (train ids).
  ids = cs_labels.TRAIN_ID_TO_LABEL_ID.astype(int)
  np.testing.assert_array_equal(np.array(official['confMatrix'])[np.ix_(ids, ids)], total)
