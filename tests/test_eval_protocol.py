"""Evaluation protocols (eval.protocol) as the reference papers score: 'adaptsegnet' (image fed at eval.input_size,
prediction upsampled to the raw label resolution), 'dacs' (image and labels at eval.input_size), 'stored'. Every
expected confusion matrix is computed in NumPy from the raw PNGs: PIL's resize where the references call it, PyTorch's
bilinear formula and PIL's nearest-neighbour index re-stated, train ids through rtda_jax.labels.

The embedded benchmark is generated at RAW = 64x128 and stored at STORED = 32x64: the raw resolution is not the
stored one, as with real Cityscapes (1024x2048 raw, 512x1024 stored).
"""

from __future__ import annotations

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from rtda_jax import evaluate, labels, parallel, selftrain
from rtda_jax.data import builders
from rtda_jax.models import resize
from tests.trainer_utils import tiny_config

RAW = (64, 128)  # [H, W] of the generated target images (the raw files)
STORED = (32, 64)  # [H, W] the builder stores
NUM_VAL = 5  # with eval batch 4: a padded last batch
NUM_CLASSES = 19
LOGIT = 10.0  # the stand-in model's one-hot logit
# A pixel whose NumPy top-two logits are closer than this could be argmaxed differently by JAX's float32 arithmetic
# (bilinear weights <= 1 of values <= LOGIT: float32 rounding error < 4 * LOGIT * 2**-24 ~ 2.4e-6); the expected
# predictions assert that no pixel is that close, so exact equality of the confusion matrices is the right test.
MARGIN = 1e-4


# ---- NumPy re-statements --------------------------------------------------------------------------------------------


def np_bilinear(x: np.ndarray, out: tuple[int, int], align_corners: bool) -> np.ndarray:
  """[h, w, C] -> [H, W, C]: PyTorch's F.interpolate(mode='bilinear') (upsample_bilinear2d's source index and
  weights), no antialiasing, in float64."""

  def source(n_in: int, n_out: int):
    i = np.arange(n_out, dtype=np.float64)
    if align_corners:
      src = i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
      src = np.maximum((i + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), src - i0

  y0, y1, fy = source(x.shape[0], out[0])
  x0, x1, fx = source(x.shape[1], out[1])
  x = np.asarray(x, np.float64)
  rows = x[y0] * (1 - fy)[:, None, None] + x[y1] * fy[:, None, None]  # [H, w, C]
  return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def np_nearest(label: np.ndarray, out: tuple[int, int]) -> np.ndarray:
  """[h, w] -> [H, W]: PIL's NEAREST resize, output pixel i samples input floor((i + 0.5) * in / out)."""
  rows = np.floor((np.arange(out[0]) + 0.5) * label.shape[0] / out[0]).astype(np.int64)
  cols = np.floor((np.arange(out[1]) + 0.5) * label.shape[1] / out[1]).astype(np.int64)
  return label[rows][:, cols]


def colour_class(image: np.ndarray) -> np.ndarray:
  """The stand-in model's class map of a uint8 image [h, w, 3]: the red channel in bands of 14 levels."""
  return np.minimum(image[..., 0].astype(np.int64) // 14, NUM_CLASSES - 1)


class ColourModel:
  """A stand-in method for evaluate: per-pixel one-hot logits of `colour_class` times variables['scale']."""

  def predict_logits(self, variables, images):  # float [B, h, w, 3] -> [B, h, w, C]
    k = jnp.minimum(images[..., 0].astype(jnp.int32) // 14, NUM_CLASSES - 1)
    return variables['scale'] * jax.nn.one_hot(k, NUM_CLASSES, dtype=jnp.float32)


VARIABLES = {'scale': np.float32(LOGIT)}


def raw_val(cfg) -> list[tuple[np.ndarray, np.ndarray]]:
  """(RGB image [H, W, 3], train ids [H, W]) of every raw val file of the generated benchmark."""
  root = os.path.join(cfg.data.root, 'synthetic', 'cityscapes')
  images = sorted(glob.glob(os.path.join(root, 'leftImg8bit', 'val', '*', '*_leftImg8bit.png')))
  out = []
  for path in images:
    label_path = path.replace('leftImg8bit', 'gtFine', 1).replace('_leftImg8bit.png', '_gtFine_labelIds.png')
    raw_ids = np.asarray(Image.open(label_path))
    out.append((np.asarray(Image.open(path).convert('RGB')), labels.to_train_ids(raw_ids, labels.CITYSCAPES_TO_TRAIN)))
  assert len(out) == NUM_VAL and out[0][0].shape == (*RAW, 3)
  return out


def np_confusion(label: np.ndarray, pred: np.ndarray) -> np.ndarray:
  valid = label < NUM_CLASSES
  return np.bincount(label[valid].astype(np.int64) * NUM_CLASSES + pred[valid],
                     minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)


def expected(cfg, protocol: str, input_size=None, align_corners: bool = True) -> np.ndarray:
  """The confusion matrix [C, C] of the stand-in model under `protocol`, from the raw files in NumPy."""
  total = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
  for image, label in raw_val(cfg):
    if protocol == 'adaptsegnet':  # AdaptSegNet/FDA: PIL bicubic to the input size, scored at the raw size
      fed = Image.fromarray(image).resize(input_size[::-1], Image.BICUBIC)
      scored = label
    else:  # 'dacs' (PIL bilinear, as scipy's imresize) and 'stored' (the builder's bilinear): scored at that size
      size = input_size if protocol == 'dacs' else STORED
      fed = Image.fromarray(image).resize(size[::-1], Image.BILINEAR)
      scored = np_nearest(label, size)
    logits = LOGIT * np.eye(NUM_CLASSES)[colour_class(np.asarray(fed))]  # [h, w, C]
    logits = np_bilinear(logits, scored.shape, align_corners)  # a no-op where the sizes agree
    top2 = np.sort(logits, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > MARGIN, 'a near-tie: the exact comparison would be fragile'
    total += np_confusion(scored, np.argmax(logits, axis=-1))
  return total


def np_miou(cm: np.ndarray) -> float:
  union = cm.sum(0) + cm.sum(1) - np.diag(cm)
  present = union > 0
  return float(100 * np.mean(np.diag(cm)[present] / union[present]))


# ---- fixtures -------------------------------------------------------------------------------------------------------


def bench_config(root: str, **overrides):
  return tiny_config(root, **{
      'data.synthetic.cityscapes_size': RAW, 'data.cityscapes_size': STORED, 'data.synthetic.num_gta5': 2,
      'data.synthetic.num_cityscapes_train': 2, 'data.synthetic.num_cityscapes_val': NUM_VAL,
      'data.eval_batch_size': 4, 'eval.input_size': STORED, 'eval.num_prediction_images': 2, **overrides})


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  """The benchmark generated at RAW, built at STORED and (val) at RAW."""
  root = str(tmp_path_factory.mktemp('protocol'))
  built = builders.prepare(bench_config(root).data, raw_splits=('val',))
  assert built['cityscapes'].size == STORED and built['cityscapes_raw'].size == RAW
  return root


def capture_confusion(monkeypatch) -> list:
  """The confusion matrices evaluate hands to metrics.compute_metrics, in a list."""
  seen = []
  compute = evaluate.metrics_lib.compute_metrics
  monkeypatch.setattr(evaluate.metrics_lib, 'compute_metrics', lambda cm, names: seen.append(cm) or compute(cm, names))
  return seen


def run_eval(cfg, monkeypatch, workdir=None):
  """(eval result, the confusion matrix it was computed from) of the stand-in model on a mesh of 2 devices."""
  with monkeypatch.context() as m:
    seen = capture_confusion(m)
    result = evaluate.evaluate(ColourModel(), VARIABLES, cfg, parallel.make_mesh(2), step=3, workdir=workdir)
  assert len(seen) == 1
  return result, np.asarray(seen[0])


# ---- the protocol table ---------------------------------------------------------------------------------------------


def test_protocols_feed_and_score_as_the_references(root):
  p = evaluate.get_protocol(bench_config(root, **{'eval.protocol': 'adaptsegnet', 'eval.input_size': (16, 32)}))
  assert (p.raw, p.image_size, p.image_resample, p.label_size) == (True, (16, 32), 'bicubic', None)
  fda = evaluate.get_protocol(bench_config(root, **{'eval.protocol': 'fda', 'eval.input_size': (16, 32)}))
  assert fda == p
  dacs = evaluate.get_protocol(bench_config(root, **{'eval.protocol': 'dacs', 'eval.input_size': (16, 32)}))
  assert (dacs.raw, dacs.image_size, dacs.image_resample, dacs.label_size) == (True, (16, 32), 'bilinear', (16, 32))
  # DACS at the stored size: the stored build is that protocol exactly, so nothing is built at the raw size.
  assert not evaluate.get_protocol(bench_config(root, **{'eval.protocol': 'dacs'})).raw
  stored = evaluate.get_protocol(bench_config(root))
  assert (stored.raw, stored.image_size, stored.label_size, stored.align_corners) == (False, None, None, None)
  assert evaluate.raw_splits(bench_config(root)) == ()
  assert evaluate.raw_splits(bench_config(root, **{'eval.protocol': 'fda'})) == ('val',)
  with pytest.raises(ValueError, match='eval.protocol'):
    evaluate.get_protocol(bench_config(root, **{'eval.protocol': 'full'}))


# ---- the protocols end to end ---------------------------------------------------------------------------------------


def test_adaptsegnet_scores_at_the_raw_label_resolution(root, monkeypatch, tmp_path):
  cfg = bench_config(root, **{'eval.protocol': 'adaptsegnet', 'eval.align_corners': True})
  result, cm = run_eval(cfg, monkeypatch, workdir=str(tmp_path))
  valid = sum(int((label < NUM_CLASSES).sum()) for _, label in raw_val(cfg))
  assert cm.sum() == valid  # every valid raw-resolution label pixel, the padding none
  want = expected(cfg, 'adaptsegnet', STORED, align_corners=True)
  np.testing.assert_array_equal(cm, want)
  assert result['miou'] == pytest.approx(np_miou(want), rel=1e-12)  # float64 ratios of the same integers
  assert result['num_images'] == NUM_VAL and result['protocol'] == 'adaptsegnet'
  assert result['input_size'] == list(STORED) and result['label_size'] == list(RAW)
  with open(tmp_path / 'eval.json') as f:
    assert json.load(f) == json.loads(json.dumps(result))
  strips = sorted(os.listdir(tmp_path / 'predictions'))
  assert len(strips) == 2 and np.asarray(Image.open(tmp_path / 'predictions' / strips[0])).shape == (RAW[0],
                                                                                                  3 * RAW[1], 3)
  assert 'protocol adaptsegnet: fed at 32x64, scored at 64x128' in evaluate.format_table(result)


def test_align_corners_true_and_false_upsample_differently(root, monkeypatch):
  cms = {}
  for align_corners in (True, False):
    cfg = bench_config(root, **{'eval.protocol': 'fda', 'eval.align_corners': align_corners})
    _, cms[align_corners] = run_eval(cfg, monkeypatch)
    np.testing.assert_array_equal(cms[align_corners], expected(cfg, 'adaptsegnet', STORED, align_corners))
  assert cms[True].sum() == cms[False].sum() and not np.array_equal(cms[True], cms[False])


def test_dacs_scores_at_the_input_size_with_nearest_labels(root, monkeypatch):
  cfg = bench_config(root, **{'eval.protocol': 'dacs', 'eval.input_size': (16, 32), 'eval.align_corners': True})
  result, cm = run_eval(cfg, monkeypatch)
  valid = sum(int((np_nearest(label, (16, 32)) < NUM_CLASSES).sum()) for _, label in raw_val(cfg))
  assert cm.sum() == valid
  want = expected(cfg, 'dacs', (16, 32))
  np.testing.assert_array_equal(cm, want)
  assert result['miou'] == pytest.approx(np_miou(want), rel=1e-12)
  assert result['input_size'] == result['label_size'] == [16, 32] and result['protocol'] == 'dacs'


def test_dacs_at_the_stored_size_equals_stored(root, monkeypatch):
  dacs, dacs_cm = run_eval(bench_config(root, **{'eval.protocol': 'dacs', 'eval.align_corners': True}), monkeypatch)
  stored, stored_cm = run_eval(bench_config(root), monkeypatch)
  np.testing.assert_array_equal(dacs_cm, stored_cm)
  assert dacs['miou'] == stored['miou']


def test_stored_scores_the_stored_split_as_before(root, monkeypatch):
  cfg = bench_config(root)
  result, cm = run_eval(cfg, monkeypatch)
  want = expected(cfg, 'stored')
  np.testing.assert_array_equal(cm, want)
  assert result['miou'] == pytest.approx(np_miou(want), rel=1e-12)
  assert result['protocol'] == 'stored' and result['input_size'] == result['label_size'] == list(STORED)
  # The default probabilities are today's: jax.image.resize of the logits (here at the label size already).
  images = np.random.default_rng(0).integers(0, 256, (2, *STORED, 3), dtype=np.uint8)
  before = jax.nn.softmax(jax.image.resize(ColourModel().predict_logits(VARIABLES, jnp.asarray(images, jnp.float32)),
                                           (2, *RAW, NUM_CLASSES), 'bilinear'), axis=-1)
  np.testing.assert_array_equal(evaluate.predict_probs(ColourModel(), VARIABLES, images, RAW), before)


def test_ensemble_probs_fn_scores_at_the_raw_size(root, monkeypatch):
  # Softmax of one-hot logits is an affine map of the one-hot vector, so averaging and upsampling it (FDA's order)
  # gives the argmax of upsampling the logits: the ensemble of one model twice scores as that model.
  cfg = bench_config(root, **{'eval.protocol': 'adaptsegnet', 'eval.align_corners': True})
  seen = capture_confusion(monkeypatch)
  result = selftrain.evaluate_ensemble(ColourModel(), [VARIABLES, VARIABLES], cfg, parallel.make_mesh(2), step=1)
  np.testing.assert_array_equal(np.asarray(seen[0]), expected(cfg, 'adaptsegnet', STORED, align_corners=True))
  assert result['label_size'] == list(RAW)


def test_tta_flip_and_scales_work_at_the_raw_size(root, monkeypatch):
  cfg = bench_config(root, **{'eval.protocol': 'adaptsegnet', 'eval.flip': True, 'eval.scales': (0.5, 1.0)})
  _, cm = run_eval(cfg, monkeypatch)
  assert cm.sum() == sum(int((label < NUM_CLASSES).sum()) for _, label in raw_val(cfg))


def test_a_protocol_without_its_raw_build_says_what_to_do(tmp_path, monkeypatch):
  cfg = bench_config(str(tmp_path), **{'eval.protocol': 'adaptsegnet', 'data.synthetic.num_cityscapes_val': 2})
  builders.prepare(cfg.data)  # the stored builds only
  with pytest.raises(builders.DatasetError, match='raw resolution.*--mode=prepare'):
    run_eval(cfg, monkeypatch)


# ---- models.resize: PyTorch's two conventions -----------------------------------------------------------------------


RESIZE_CASES = [((5, 7), (11, 13)), ((8, 6), (3, 4)), ((4, 4), (1, 9)), ((1, 5), (3, 5)), ((6, 9), (6, 20))]


@pytest.mark.parametrize('align_corners', [True, False])
@pytest.mark.parametrize('size_in,size_out', RESIZE_CASES)
def test_resize_bilinear_is_pytorchs_formula(size_in, size_out, align_corners):
  x = np.random.default_rng(0).random((2, *size_in, 3), dtype=np.float32)
  got = np.asarray(resize.resize_bilinear(jnp.asarray(x), size_out, align_corners))
  want = np.stack([np_bilinear(xi, size_out, align_corners) for xi in x])
  # Values in [0, 1), two linear interpolations in float32: error < 4 * 2**-24 ~ 2.4e-7; 1e-6 leaves room.
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize('align_corners', [True, False])
@pytest.mark.parametrize('size_in,size_out', RESIZE_CASES)
def test_resize_bilinear_matches_torch_interpolate(size_in, size_out, align_corners):
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(1).random((2, *size_in, 3), dtype=np.float32)
  got = np.asarray(resize.resize_bilinear(jnp.asarray(x), size_out, align_corners))
  want = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size_out, mode='bilinear',
                                         align_corners=align_corners).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # both float32: as above
