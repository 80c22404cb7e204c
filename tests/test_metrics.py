"""Confusion matrix and scores (IoU, Dice, the SYNTHIA class sets): by hand, against NumPy and against the official
Cityscapes evaluator; the printed table and TensorBoard scalars of an evaluation."""

import copy
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import common
from rtda_jax import evaluate
from rtda_jax import labels as cs_labels
from rtda_jax import metrics
from rtda_jax.errors import ConfigError

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
  assert set(out) == {'miou', 'per_class_iou', 'per_class_dice', 'mean_dice', 'pixel_accuracy', 'mean_class_accuracy',
                      'fwiou'}
  iou_a, iou_b = 3 / (3 + 1 + 2), 4 / (4 + 2 + 1)
  dice_a, dice_b = 2 * 3 / (2 * 3 + 2 + 1), 2 * 4 / (2 * 4 + 1 + 2)  # 2TP / (2TP + FP + FN)
  assert out['per_class_dice'] == {'a': pytest.approx(100 * dice_a), 'b': pytest.approx(100 * dice_b), 'c': None}
  assert out['mean_dice'] == pytest.approx(100 * (dice_a + dice_b) / 2)
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
  assert out == {'miou': None, 'per_class_iou': {'a': None, 'b': None}, 'per_class_dice': {'a': None, 'b': None},
                 'mean_dice': None, 'pixel_accuracy': None, 'mean_class_accuracy': None, 'fwiou': None}


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


# ---- Dice and the SYNTHIA class sets, against NumPy on a hand-made 19-class confusion matrix -------------------------

# Every score is a ratio of the same integer counts in float64, computed by other formulas below: they agree to a few
# ulps (float64 eps 2.2e-16, a handful of operations, means of <= 19 terms), far inside rel=1e-12.
REL = 1e-12
SYNTHIA_ABSENT = ('terrain', 'truck', 'train')


def hand_made_cm() -> np.ndarray:
  """[19, 19] counts as a SYNTHIA-trained model leaves them on Cityscapes: terrain and truck in the ground truth but
  never predicted, train absent from both, rider (one of the 16) absent from both, bus only predicted."""
  names = cs_labels.CLASS_NAMES
  cm = np.random.default_rng(7).integers(0, 40, (19, 19)) + np.diag(np.arange(100, 290, 10))
  never_predicted = [names.index(n) for n in ('terrain', 'truck', 'train', 'rider')]
  cm[:, never_predicted] = 0
  cm[[names.index('train'), names.index('rider'), names.index('bus')], :] = 0
  return cm


def np_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-class IoU and Dice (nan where undefined) by explicit TP / FP / FN, Dice as F1 = 2PR / (P + R)."""
  iou, dice = np.full(len(cm), np.nan), np.full(len(cm), np.nan)
  for c in range(len(cm)):
    tp = cm[c, c]
    fn = cm[c].sum() - tp
    fp = cm[:, c].sum() - tp
    if tp + fp + fn:
      iou[c] = tp / (tp + fp + fn)
      precision = tp / (tp + fp) if tp + fp else 0.0
      recall = tp / (tp + fn) if tp + fn else 0.0
      dice[c] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return iou, dice


def np_mean(values: np.ndarray, names, subset) -> float:
  picked = [v for v, n in zip(values, names) if n in subset and not np.isnan(v)]
  return 100 * sum(picked) / len(picked)


def test_dice_against_numpy_f1():
  cm = hand_made_cm()
  names = cs_labels.CLASS_NAMES
  out = metrics.compute_metrics(cm, names)
  _, dice = np_scores(cm)
  for name, want in zip(names, dice):
    if np.isnan(want):
      assert out['per_class_dice'][name] is None, name
    else:
      assert out['per_class_dice'][name] == pytest.approx(100 * want, rel=REL, abs=1e-12), name
  assert out['per_class_dice']['train'] is None and out['per_class_dice']['bus'] == 0.0  # bus: only predicted
  assert out['mean_dice'] == pytest.approx(np_mean(dice, names, names), rel=REL)


def test_synthia16_and_13_class_miou_against_numpy():
  cm = hand_made_cm()
  names = cs_labels.CLASS_NAMES
  everything = metrics.compute_metrics(cm, names)
  out = {**everything, **metrics.class_set_metrics(cm, names, 'synthia16')}
  iou, dice = np_scores(cm)
  sixteen = [n for n in names if n not in SYNTHIA_ABSENT]
  thirteen = [n for n in sixteen if n not in ('wall', 'fence', 'pole')]
  assert out['class_set'] == 'synthia16'
  assert out['miou_16'] == out['miou'] == pytest.approx(np_mean(iou, names, sixteen), rel=REL)
  assert out['miou_13'] == pytest.approx(np_mean(iou, names, thirteen), rel=REL)
  assert out['mean_dice'] == pytest.approx(np_mean(dice, names, sixteen), rel=REL)
  # Terrain and truck score 0 over all 19 classes (in the ground truth, never predicted): the 16-class mean differs.
  assert everything['per_class_iou']['terrain'] == 0.0 and out['miou'] != pytest.approx(everything['miou'], rel=1e-3)
  for name in SYNTHIA_ABSENT:
    assert out['per_class_iou'][name] is None and out['per_class_dice'][name] is None, name
  assert out['per_class_iou']['rider'] is None  # one of the 16, but absent from both: left out of the means
  for name in sixteen:
    if name != 'rider':
      assert out['per_class_iou'][name] == pytest.approx(100 * iou[names.index(name)], rel=REL, abs=1e-12), name
  accuracy = [cm[c, c] / cm[c].sum() for c, n in enumerate(names) if n in sixteen and cm[c].sum()]
  assert out['mean_class_accuracy'] == pytest.approx(100 * np.mean(accuracy), rel=REL)
  # Pixel-level scores count every labelled pixel, terrain's and truck's too.
  assert out['pixel_accuracy'] == pytest.approx(100 * np.trace(cm) / cm.sum(), rel=REL)
  assert out['fwiou'] == everything['fwiou']
  assert json.loads(json.dumps(out))['per_class_iou']['terrain'] is None  # null in eval.json


def test_class_set_all_changes_nothing_and_unknown_sets_are_errors():
  cm = hand_made_cm()
  assert metrics.class_set_metrics(cm, cs_labels.CLASS_NAMES, 'all') == {'class_set': 'all'}
  with pytest.raises(ValueError, match="'synthia13'.*eval.class_set"):
    metrics.class_set_metrics(cm, cs_labels.CLASS_NAMES, 'synthia13')
  with pytest.raises(ValueError, match='lacks'):
    metrics.class_set_metrics(np.eye(3), ['road', 'sky', 'car'], 'synthia16')


def test_synthia16_on_a_16_class_matrix_names_the_same_means():
  """A model with 16 outputs (the 16 classes in train-id order): nothing to hide, the same named means."""
  cm19 = hand_made_cm()
  keep = [i for i, n in enumerate(cs_labels.CLASS_NAMES) if n not in SYNTHIA_ABSENT]
  cm16 = cm19[np.ix_(keep, keep)]
  out = metrics.class_set_metrics(cm16, cs_labels.SYNTHIA16_CLASS_NAMES, 'synthia16')
  iou, _ = np_scores(cm16)
  assert set(out) == {'class_set', 'miou_16', 'miou_13'}
  assert out['miou_16'] == pytest.approx(np_mean(iou, cs_labels.SYNTHIA16_CLASS_NAMES,
                                                 cs_labels.SYNTHIA16_CLASS_NAMES), rel=REL)
  assert out['miou_13'] == pytest.approx(np_mean(iou, cs_labels.SYNTHIA16_CLASS_NAMES,
                                                 cs_labels.SYNTHIA13_CLASS_NAMES), rel=REL)


# ---- the class set in the config, the printed table and the TensorBoard scalars --------------------------------------


def eval_result(class_set: str) -> dict:
  cm = hand_made_cm()
  result = {'dataset': 'cityscapes', 'split': 'val', 'step': 5, 'num_images': 2,
            **metrics.compute_metrics(cm, cs_labels.CLASS_NAMES)}
  result.update(metrics.class_set_metrics(cm, cs_labels.CLASS_NAMES, class_set))
  return result


def test_config_class_set_resolves_from_the_source():
  config = common.get_base_config()
  assert config.eval.class_set == 'auto' and evaluate.get_class_set(config) == 'all'  # data.source 'gta5'
  config.data.source = 'synthia'
  assert evaluate.get_class_set(config) == 'synthia16'
  config.eval.class_set = 'all'
  assert evaluate.get_class_set(config) == 'all'
  config.eval.class_set = 'synthia13'
  with pytest.raises(ConfigError, match="eval.class_set='synthia13'.*synthia16"):
    evaluate.get_class_set(config)


def test_table_shows_absent_classes_as_dash_and_both_means():
  result = eval_result('synthia16')
  rows = {line[:15].strip(): line[15:].split() for line in evaluate.format_table(result).splitlines()}
  for name in SYNTHIA_ABSENT:
    assert rows[name] == ['-', '-'], name  # IoU and Dice
  assert rows['rider'] == ['n/a', 'n/a']  # in the set, but absent from ground truth and prediction
  assert rows['road'] == [f"{result['per_class_iou']['road']:.2f}", f"{result['per_class_dice']['road']:.2f}"]
  assert rows['mIoU (16)'] == [f"{result['miou_16']:.2f}"] and rows['mIoU* (13)'] == [f"{result['miou_13']:.2f}"]
  assert 'mIoU' not in rows
  table = evaluate.format_table(result)
  assert 'without wall, fence, pole' in table and f"mean Dice {result['mean_dice']:.2f}" in table
  every = {line[:15].strip(): line[15:].split() for line in evaluate.format_table(eval_result('all')).splitlines()}
  assert every['terrain'] == ['0.00', '0.00'] and every['mIoU'] == [f"{eval_result('all')['miou']:.2f}"]


def test_table_of_a_result_written_before_dice_and_class_sets():
  old = {k: v for k, v in eval_result('all').items() if k not in ('class_set', 'per_class_dice', 'mean_dice')}
  rows = {line[:15].strip(): line[15:].split() for line in evaluate.format_table(old).splitlines()}
  assert rows['class'] == ['IoU'] and rows['road'] == [f"{old['per_class_iou']['road']:.2f}"]


def test_tensorboard_scalars_name_the_class_set_means():
  result = eval_result('synthia16')
  assert evaluate.scalars(result) == {f'eval/{k}': result[k] for k in ('miou', 'pixel_accuracy', 'mean_dice',
                                                                       'miou_16', 'miou_13')}
  assert set(evaluate.scalars(eval_result('all'))) == {'eval/miou', 'eval/pixel_accuracy', 'eval/mean_dice'}
