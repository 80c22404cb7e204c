"""`model.output_classes='synthia16'`: networks with outputs for SYNTHIA's 16 classes only (models/classes.py), seen by
the rest of the project in the 19-class label space; the labels of the 3 other classes ignored in training and
evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rtda_jax import app, labels, losses, models
from rtda_jax.models import classes
from tests.trainer_utils import TINY_MODEL, read_eval, tiny_config

SIXTEEN = tuple(labels.CLASS_NAMES.index(n) for n in labels.SYNTHIA16_CLASS_NAMES)
ABSENT = tuple(labels.CLASS_NAMES.index(n) for n in ('terrain', 'truck', 'train'))


def test_the_sixteen_classes_are_those_synthia_labels():
  assert classes.output_ids('synthia16') == SIXTEEN and classes.output_ids('all') is None
  assert sorted(SIXTEEN + ABSENT) == list(range(19))  # the 19 train ids are the 16 and terrain, truck, train
  with pytest.raises(ValueError, match='output_classes'):
    classes.output_ids('synthia13')


def _model(name: str, output_classes: str, **kw):
  return models.get_model(ml_collections.ConfigDict(dict(name=name, num_classes=19, dtype='float32',
                                                         output_classes=output_classes, **kw)))


@pytest.mark.parametrize('name, kw', [('bisenet', {}), ('deeplabv2', {'multi_level': True})])
def test_a_sixteen_output_net_has_16_outputs_placed_at_their_train_ids(name, kw):
  """The classifiers have 16 outputs; the 19-channel logits hold them at the 16 train ids (checked against the same
  network built with plain 16 outputs and the same parameters) and ABSENT_LOGIT at terrain, truck and train."""
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3), maxval=255.0)
  sixteen, plain = _model(name, 'synthia16', **kw), models.get_model(ml_collections.ConfigDict(
      dict(name=name, num_classes=16, dtype='float32', **kw)))
  variables = sixteen.init(jax.random.PRNGKey(0), images, train=False)
  out_plain = plain.apply(variables, images, train=True, mutable=['batch_stats'])[0]
  out = sixteen.apply(variables, images, train=True, mutable=['batch_stats'])[0]
  for full, part in zip([out['logits'], *out['aux']], [out_plain['logits'], *out_plain['aux']]):
    assert full.shape[-1] == 19 and part.shape[-1] == 16
    np.testing.assert_array_equal(np.asarray(full)[..., list(SIXTEEN)], np.asarray(part))
    np.testing.assert_array_equal(np.asarray(full)[..., list(ABSENT)], classes.ABSENT_LOGIT)
  assert len(out['aux']) == (2 if name == 'bisenet' else 1)
  counts = lambda v: sum(x.size for x in jax.tree.leaves(v['params']))
  full_params = jax.eval_shape(lambda: _model(name, 'all', **kw).init(jax.random.PRNGKey(0), images, train=False))
  assert counts(variables) < counts(full_params)  # fewer classifier weights, the rest the same network


def test_losses_and_probabilities_over_the_expanded_logits_are_the_16_class_ones():
  """Cross-entropy, softmax and entropy (p log p) over the 19 channels equal the 16-class ones, computed in NumPy
  from the 16 logits with labels renumbered 0..15; finite everywhere."""
  rng = np.random.default_rng(0)
  part = rng.normal(0, 8, (2, 5, 7, 16)).astype(np.float32)
  label = rng.choice(np.array(SIXTEEN + (255,)), (2, 5, 7)).astype(np.int32)
  full = classes.expand(jnp.asarray(part), SIXTEEN, 19)
  index = {t: k for k, t in enumerate(SIXTEEN)}
  lse = np.log(np.exp(part - part.max(-1, keepdims=True)).sum(-1)) + part.max(-1)
  valid = label != 255
  picked = np.take_along_axis(part, np.vectorize(lambda t: index.get(t, 0))(label)[..., None], -1)[..., 0]
  want = float(((lse - picked) * valid).sum() / valid.sum())
  got = float(losses.cross_entropy(full, jnp.asarray(label)))
  assert got == pytest.approx(want, rel=1e-5)
  p16 = np.exp(part - lse[..., None])
  p19 = np.asarray(jax.nn.softmax(full, -1))
  np.testing.assert_allclose(p19[..., list(SIXTEEN)], p16, rtol=1e-5, atol=1e-7)
  assert (p19[..., list(ABSENT)] == 0).all()
  entropy19 = -np.asarray(jnp.sum(jax.nn.softmax(full, -1) * jax.nn.log_softmax(full, -1), -1))
  np.testing.assert_allclose(entropy19, -(p16 * np.log(np.maximum(p16, 1e-30))).sum(-1), rtol=1e-4, atol=1e-5)


def test_labels_of_the_absent_classes_are_ignored():
  label = np.array([[0, 9, 14], [16, 255, 18]], np.uint8)
  np.testing.assert_array_equal(classes.ignore_absent(label, SIXTEEN), [[0, 255, 255], [255, 255, 18]])
  assert classes.ignore_absent(label, None) is label


def test_a_sixteen_output_oracle_trains_and_scores_its_16_classes(data_root, tmp_path):
  """On the Cityscapes-like target, whose labels hold terrain, truck and train: those pixels are ignored by the loss
  (a loss near ABSENT_LOGIT = 1e4 otherwise) and by the confusion matrix (their rows are empty), and the means are
  the 16-class (and 13-class) ones."""
  workdir = str(tmp_path / 'oracle16')
  app.run(tiny_config(data_root, 'oracle', **{'model.name': TINY_MODEL, 'model.output_classes': 'synthia16',
                                              'train.num_steps': 2}), workdir=workdir)
  with open(f'{workdir}/metrics.jsonl') as f:
    import json  # pylint: disable=g-import-not-at-top
    lines = [json.loads(line) for line in f if line.strip()]
  loss = [l['loss'] for l in lines if 'loss' in l]
  logged = [l for l in lines if 'eval/miou' in l]  # the class set's means reach metrics.jsonl / TensorBoard too
  assert logged and {'eval/miou_16', 'eval/miou_13', 'eval/mean_dice'} <= set(logged[-1])
  assert loss and all(np.isfinite(loss)) and max(loss) < 10.0, loss
  ev = read_eval(workdir)
  assert ev['class_set'] == 'synthia16' and 'miou_16' in ev and 'miou_13' in ev
  cm = np.asarray(ev['confusion'])
  assert cm[list(ABSENT)].sum() == 0 and cm[:, list(ABSENT)].sum() == 0
  assert cm[list(SIXTEEN)].sum() > 0
