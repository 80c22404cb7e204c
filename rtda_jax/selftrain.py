"""Multi-band transfer (MBT) and pseudo-labels for FDA's self-training: `--mode=pseudolabel`.

1. Ensemble: the last checkpoints of several runs (FDA with beta 0.01, 0.05, 0.09); their softmax probabilities are
   averaged. Evaluated on the target val split like `evaluate.evaluate` -> eval.json in the MBT workdir.
2. Pseudo-labels of the target train split, by the rule `mbt.rule`. Every rule takes per-class thresholds from
   per-class histograms of the ensemble's confidence (max_c p_c) over the pixels predicted (argmax_c p_c) as each class,
   accumulated over the split in a first pass (memory: classes x bins counts, not every prediction); the labels come
   from a second pass with the thresholds.
   - 'fda' (FDA's getSudoLabel_multi.py): threshold = the confidence at rank round(0.66 n) of the n pixels predicted as
     the class (sorted ascending), capped at 0.9 (`mbt.percentile`, `mbt.max_threshold`); a pixel keeps its
     prediction when its confidence reaches its class's threshold. It keeps the top third of every predicted class,
     however unreliable the class: a class the ensemble confidently over-predicts keeps many wrong labels.
   - 'cbst' (CBST, Zou et al., ECCV 2018, Algorithm 2 and `kc_parameters` / `label_selection` of the authors' code):
     k_c = the confidence at 1-based position floor(n p) of the class's n confidences sorted descending (p =
     `mbt.cbst_portion`, grown over rounds: 0.2, 0.4, ...), so the top portion p of each class reaches it; a class with
     floor(n p) = 0 keeps CBST's initial k_c = 1. The label is CBST's class-normalised argmax, argmax_c p_c / k_c,
     which can differ from the plain argmax, and the pixel is kept when max_c p_c / k_c >= 1. How it differs from
     FDA's rule: the threshold comes from the top portion p of each class (0.2 in the first round, against FDA's
     fixed 0.34) and grows with the rounds; the comparison is of probabilities of every class, not of the top one
     only, so a pixel whose winning class is confident everywhere (a high k) goes to a runner-up class with a lower
     k when it clears that one by a wider ratio (and is kept though outside its own class's top portion). Like FDA's
     rule it keeps the same portion of every predicted class, so it does not by itself judge a class's reliability.
     We cap k_c at `mbt.max_threshold` (0.9, as FDA's rule): the authors' code does not cap (k_c <= 1 by
     construction), so `--config.mbt.max_threshold=1` is their rule exactly.
   - 'agreement': FDA's thresholds and rule, and also every ensemble member's own argmax equals the ensemble's: a
     class one member over-predicts with confidence is dropped where the other members predict something else.
   The histogram gives each threshold to one bin (1 / `mbt.num_bins`): the lower edge of the bin holding the exact
   value, so every rule keeps every pixel its exact version keeps, plus those within one bin below a threshold (and
   CBST's label can differ where two classes' ratios p_c / k_c are within that bin's relative size).
3. The labels are written as a raw Cityscapes-layout folder <data.root>/pseudo/<mbt.name>/ (label ids in
   gtFine/train/<city>/*_gtFine_labelIds.png, images and the val split hard-linked from the target's raw folder, the
   rule and its thresholds in pseudolabels.json), which `--config.selftrain.pseudo_dir` then trains on like any
   Cityscapes folder. Rounds: pseudolabel -> selftrain -> pseudolabel with the self-trained run as the ensemble
   (`mbt.workdirs`) and a larger `mbt.cbst_portion` -> selftrain.
4. Image selection (`mbt.select`, rtda_jax/select.py; default 'all': every image): before the two passes, the k
   (`mbt.select_k`) images of the split closest to a reference set (`mbt.select_reference`) by the 'fd' or
   'histogram' rule, or k at random. Only they are pseudo-labelled (the thresholds come from their pixels alone) and
   written to the folder; the others are absent from it, so the TFDS build and the self-training see the k images
   only. The selection (rule, k, each image's name and distance) is in selection.json beside pseudolabels.json.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from rtda_jax import data as data_lib
from rtda_jax import evaluate, files
from rtda_jax import labels as labels_lib
from rtda_jax import parallel
from rtda_jax import select as select_lib
from rtda_jax.methods import base

INFO_FILE = 'pseudolabels.json'
_IMAGE_SUFFIX = '_leftImg8bit.png'
_LABEL_SUFFIX = '_gtFine_labelIds.png'


# ---- the ensemble ---------------------------------------------------------------------------------------------------


def member_workdirs(config: ml_collections.ConfigDict) -> list[str]:
  workdirs = config.mbt.workdirs
  if isinstance(workdirs, str):
    workdirs = workdirs.split(',')
  workdirs = [w.strip() for w in workdirs if w and w.strip()]
  if not workdirs:
    raise ValueError('config.mbt.workdirs is empty: pass the runs to ensemble, e.g. '
                     '--config.mbt.workdirs=runs/fda_b001,runs/fda_b005,runs/fda_b009.')
  return workdirs


def _check_member_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return
  with open(path) as f:
    saved = json.load(f).get('model', {})
  for field in ('name', 'num_classes', 'multi_level'):
    if field in saved and saved[field] != config.model.get(field):
      raise ValueError(f'{workdir} was trained with model.{field}={saved[field]!r} but this config has '
                       f'{config.model.get(field)!r}; pass the matching model preset (e.g. configs/fda.py:mbt,'
                       f'{saved.get("name", "bisenet")}) or --config.model.{field}=...')


def load_members(config: ml_collections.ConfigDict,
                 workdirs: Sequence[str]) -> tuple[base.Method, list[Any], list[int]]:
  """(method, [segmentation variables], [step]) of the last (or config.eval.checkpoint's) checkpoint of each run."""
  from rtda_jax import checkpointing, methods
  method = methods.get_method(config)
  target = None
  variables, steps = [], []
  for workdir in workdirs:
    if not os.path.isdir(os.path.join(workdir, 'checkpoints', 'last')):
      raise FileNotFoundError(f'No checkpoints in {workdir}/checkpoints/last: train that run first (e.g. '
                              f'python main.py --config=configs/fda.py:b001 --workdir={workdir}) or fix '
                              'config.mbt.workdirs.')
    _check_member_config(config, workdir)
    if target is None:  # one freshly initialised state gives the tree structure, shapes and dtypes of all
      target = method.init(jax.random.PRNGKey(config.seed), base.train_shapes(config))
    ckpt = checkpointing.Checkpointer(workdir)
    try:
      if ckpt.latest_step() is None:
        raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints/last: train that run first.')
      state, meta = ckpt.restore(target, step=config.eval.checkpoint)
    finally:
      ckpt.close()
    variables.append(jax.device_get(method.eval_variables(state)))
    steps.append(int(meta['step']))
  return method, variables, steps


def member_probs(method: base.Method, members: Sequence[Any], images: jax.Array, out_shape: tuple[int, int],
                 scales: tuple[float, ...] = (1.0,), flip: bool = False) -> list[jax.Array]:
  """`evaluate.predict_probs` of each member: a list of float32 [B, h, w, C] at `out_shape`."""
  return [evaluate.predict_probs(method, v, images, out_shape, scales, flip) for v in members]


def _mean(probs: Sequence[jax.Array]) -> jax.Array:
  return sum(probs) / len(probs)


def ensemble_probs(method: base.Method, members: Sequence[Any], images: jax.Array, out_shape: tuple[int, int],
                   scales: tuple[float, ...] = (1.0,), flip: bool = False) -> jax.Array:
  """Mean over the members of `evaluate.predict_probs`: float32 [B, h, w, C] at `out_shape`."""
  return _mean(member_probs(method, members, images, out_shape, scales, flip))


def evaluate_ensemble(method: base.Method, members: Sequence[Any], config: ml_collections.ConfigDict,
                      mesh: jax.sharding.Mesh, *, step: int, workdir: str | None = None,
                      split: str | None = None) -> dict[str, Any]:
  """`evaluate.evaluate` for the averaged softmax of several models: eval.json and predictions/ in `workdir`.

  Under an eval.protocol that upsamples (align_corners set) the mean softmax at the input size is upsampled to the
  scored size, as FDA's evaluation_multi.py does; 'stored' scores the mean as before."""
  ensemble = functools.partial(ensemble_probs, method, scales=tuple(config.eval.scales), flip=bool(config.eval.flip))
  align_corners = evaluate.get_protocol(config).align_corners

  def upsampled(variables, images, out_shape):  # images [B, h, w, 3] -> probabilities [B, H, W, C] at out_shape
    return evaluate.resize_scores(ensemble(variables, images, images.shape[1:3]), out_shape, align_corners)

  probs_fn = ensemble if align_corners is None else upsampled
  return evaluate.evaluate(method, list(members), config, mesh, step=step, workdir=workdir, split=split,
                           probs_fn=probs_fn)


# ---- thresholds from streaming histograms ---------------------------------------------------------------------------


def confidence_histogram(preds: jax.Array, confidence: jax.Array, valid: jax.Array, num_classes: int,
                         num_bins: int) -> jax.Array:
  """int32 [num_classes, num_bins]: how many valid pixels predicted as each class have each confidence bin.

  preds int [B, H, W], confidence float [B, H, W] in [0, 1], valid bool [B] (padding examples) or [B, H, W].
  Bin j holds confidences in [j / num_bins, (j + 1) / num_bins); 1.0 falls in the last bin.
  """
  bins = jnp.clip(jnp.floor(confidence.astype(jnp.float32) * num_bins).astype(jnp.int32), 0, num_bins - 1)
  valid = jnp.broadcast_to(valid.reshape(valid.shape + (1,) * (preds.ndim - valid.ndim)), preds.shape)
  classes = preds.astype(jnp.int32)
  valid = valid & (classes >= 0) & (classes < num_classes)
  index = jnp.where(valid, classes * num_bins + bins, num_classes * num_bins)  # invalid pixels -> a dropped slot
  counts = jnp.zeros((num_classes * num_bins + 1,), jnp.int32).at[index.reshape(-1)].add(1)
  return counts[:-1].reshape(num_classes, num_bins)


def class_thresholds(histogram: np.ndarray, percentile: float = 0.66, max_threshold: float = 0.9) -> np.ndarray:
  """float64 [C] per-class thresholds from confidence histograms [C, num_bins].

  FDA's rule: sort the n confidences of the pixels predicted as the class, take the one at index round(n * 0.66)
  (np.round: half to even; clamped to n - 1, where FDA would index past the end), cap at `max_threshold`; a class
  no pixel is predicted as gets 0. From a histogram the value is known to one bin: this returns the lower edge of
  the bin holding it, so the threshold is at most 1 / num_bins below FDA's and keeps every pixel FDA keeps.
  """
  histogram = np.asarray(histogram, np.int64)
  num_classes, num_bins = histogram.shape
  out = np.zeros(num_classes, np.float64)
  cumulative = np.cumsum(histogram, axis=1)  # [C, num_bins]: pixels with a bin <= j
  for c in range(num_classes):
    n = int(cumulative[c, -1])
    if n == 0:
      continue
    rank = min(int(np.round(n * percentile)), n - 1)  # 0-based index in the ascending order
    out[c] = _bin_edge_at_rank(cumulative[c], rank)
  return np.minimum(out, max_threshold)


def _bin_edge_at_rank(cumulative: np.ndarray, rank: int) -> float:
  """Lower edge of the bin holding the confidence at 0-based ascending index `rank`, from one class's cumulative
  counts [num_bins] (pixels with a bin <= j)."""
  j = int(np.searchsorted(cumulative, rank, side='right'))  # first bin with more than `rank` pixels at or below
  return j / len(cumulative)


def cbst_thresholds(histogram: np.ndarray, portion: float = 0.2, max_threshold: float = 0.9) -> np.ndarray:
  """float64 [C] CBST's class-balanced thresholds k_c from confidence histograms [C, num_bins].

  CBST's `kc_parameters`: sort the n confidences of the pixels predicted as the class in descending order and take
  the one at 1-based position floor(n * portion) (0-based ascending index n - floor(n * portion)), so that the most
  confident `portion` of the class's pixels reach it; a class with floor(n * portion) = 0 keeps CBST's initial value
  1. Computed thresholds are then capped at `max_threshold` (1: none, as in CBST's code). To one bin, like
  `class_thresholds`: the lower edge of the bin holding the value, at most 1 / num_bins below CBST's.
  """
  _check_portion(portion)
  histogram = np.asarray(histogram, np.int64)
  out = np.ones(histogram.shape[0], np.float64)
  cumulative = np.cumsum(histogram, axis=1)  # [C, num_bins]
  for c in range(len(out)):
    n = int(cumulative[c, -1])
    selected = int(math.floor(n * portion))  # CBST's len_cls_thresh
    if selected > 0:
      out[c] = min(_bin_edge_at_rank(cumulative[c], n - selected), max_threshold)
  return out


def _check_portion(portion: float) -> None:
  if not 0.0 < portion <= 1.0:
    raise ValueError(f'config.mbt.cbst_portion={portion} must be in (0, 1]: the portion of each class\'s pixels that '
                     'CBST keeps (0.2 in the first round, grown over rounds).')


RULES = ('fda', 'cbst', 'agreement')


def check_rule(config: ml_collections.ConfigDict) -> str:
  """config.mbt.rule, checked."""
  rule = config.mbt.rule
  if rule not in RULES:
    raise ValueError(f'config.mbt.rule={rule!r} is not a pseudo-label rule; use one of {", ".join(RULES)} '
                     '(configs/fda.py, e.g. --config.mbt.rule=cbst).')
  if rule == 'cbst':
    _check_portion(config.mbt.cbst_portion)
    if config.mbt.num_bins < config.model.num_classes:
      # A confidence (max_c p_c) is >= 1 / C, so with at least C bins no threshold's lower bin edge is 0; CBST
      # divides by the thresholds.
      raise ValueError(f'config.mbt.num_bins={config.mbt.num_bins} is below model.num_classes='
                       f'{config.model.num_classes}: CBST needs thresholds above 0; use the default 10000.')
  return rule


def rule_thresholds(histogram: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """float64 [C]: CBST's thresholds for mbt.rule 'cbst', FDA's for 'fda' and 'agreement'."""
  mbt = config.mbt
  if check_rule(config) == 'cbst':
    return cbst_thresholds(histogram, mbt.cbst_portion, mbt.max_threshold)
  return class_thresholds(histogram, mbt.percentile, mbt.max_threshold)


def rule_info(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The rule and the parameters its thresholds depend on, for pseudolabels.json."""
  mbt = config.mbt
  rule = check_rule(config)
  params = {'portion': mbt.cbst_portion} if rule == 'cbst' else {'percentile': mbt.percentile}
  return {'rule': rule, **params, 'max_threshold': mbt.max_threshold, 'num_bins': mbt.num_bins}


def apply_thresholds(preds: np.ndarray, confidence: np.ndarray, thresholds: np.ndarray,
                     ignore: int = labels_lib.IGNORE) -> np.ndarray:
  """uint8 train ids [..., H, W]: the prediction where its confidence >= its class's threshold, else `ignore`."""
  preds, confidence = np.asarray(preds), np.asarray(confidence)
  # Compared in the confidence's precision (float32), in which the histogram bins were computed.
  keep = confidence >= np.asarray(thresholds).astype(confidence.dtype)[preds.astype(np.int64)]
  return np.where(keep, preds, ignore).astype(np.uint8)


def ensemble_scores(probs: Sequence[jax.Array], thresholds: jax.Array | None = None,
                    agreement: bool = False) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """(preds uint8 [B, H, W], score float32 [B, H, W], agree bool [B, H, W] or None) from the members' softmax
  `probs` (a list of [B, H, W, C]), jittable.

  preds, score: argmax_c and max_c of the ensemble mean p (FDA's prediction and confidence), or, given CBST's
  thresholds k [C], of p_c / k_c (CBST's class-normalised prediction; kept where the score is >= 1).
  agree (when `agreement`): every member's own argmax equals the argmax of p.
  """
  scores = _mean(probs)  # [B, H, W, C]
  preds = jnp.argmax(scores, axis=-1)
  agree = None
  if agreement:
    agree = functools.reduce(jnp.logical_and, [jnp.argmax(p, axis=-1) == preds for p in probs])
  if thresholds is not None:
    scores = scores / jnp.asarray(thresholds, scores.dtype)  # CBST's weighted_prob = pred_prob / cls_thresh
    preds = jnp.argmax(scores, axis=-1)
  return preds.astype(jnp.uint8), jnp.max(scores, axis=-1), agree


def select_labels(rule: str, preds: np.ndarray, score: np.ndarray, thresholds: np.ndarray,
                  agree: np.ndarray | None = None) -> np.ndarray:
  """uint8 train ids [..., H, W] of `rule` from `ensemble_scores`' outputs (with `thresholds` for 'cbst'), `IGNORE`
  where not kept: 'fda' keeps a pixel whose confidence reaches its class's threshold, 'agreement' one that also has
  `agree`, 'cbst' one whose class-normalised score max_c p_c / k_c reaches 1."""
  if rule == 'cbst':
    return apply_thresholds(preds, score, np.ones(len(thresholds)))
  labels = apply_thresholds(preds, score, thresholds)
  if rule == 'agreement':
    labels = np.where(np.asarray(agree), labels, labels_lib.IGNORE).astype(np.uint8)
  return labels


# ---- the pseudo-labelled folder -------------------------------------------------------------------------------------


def label_name(image_name: str) -> str:
  """'leftImg8bit/train/<city>/<stem>_leftImg8bit.png' -> 'gtFine/train/<city>/<stem>_gtFine_labelIds.png'."""
  parts = image_name.replace(os.sep, '/').split('/')
  if len(parts) < 2 or parts[0] != 'leftImg8bit' or not parts[-1].endswith(_IMAGE_SUFFIX):
    raise ValueError(f'{image_name!r} is not a Cityscapes image path (leftImg8bit/<split>/<city>/*{_IMAGE_SUFFIX}); '
                     'pseudo-labels need a Cityscapes-layout target.')
  return '/'.join(['gtFine', *parts[1:-1], parts[-1][:-len(_IMAGE_SUFFIX)] + _LABEL_SUFFIX])


def link_or_copy(src: str, dst: str) -> None:
  """Hard-links src to dst (a copy where the file system cannot link)."""
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  if os.path.lexists(dst):
    os.remove(dst)
  try:
    os.link(src, dst)
  except OSError:
    shutil.copy2(src, dst)


def write_label(path: str, train_ids: np.ndarray, size: tuple[int, int] | None = None) -> None:
  """Writes train ids [H, W] as a Cityscapes label-id PNG ('L'; ignore -> 0, 'unlabeled'), resized (nearest) to
  `size` = (W, H) when given, so that it pairs with its raw image."""
  train_ids = np.asarray(train_ids, np.uint8)
  label_ids = np.where(train_ids == labels_lib.IGNORE, 0,
                       labels_lib.TRAIN_ID_TO_LABEL_ID[np.minimum(train_ids, labels_lib.NUM_CLASSES - 1)])
  image = Image.fromarray(label_ids.astype(np.uint8))  # 2-D uint8 -> mode 'L'
  if size is not None and image.size != tuple(size):
    image = image.resize(tuple(size), Image.NEAREST)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path)


def link_split(raw_dir: str, out_dir: str, split: str, labels: bool = True) -> int:
  """Links a split's images (and labels) from a raw Cityscapes folder into `out_dir` at the same relative paths."""
  from rtda_jax.data import builders
  examples = builders.find_examples('cityscapes', raw_dir)[split]
  for ex in examples:
    link_or_copy(ex.image_path, os.path.join(out_dir, ex.name))
    if labels:
      link_or_copy(ex.label_path, os.path.join(out_dir, os.path.relpath(ex.label_path, raw_dir)))
  return len(examples)


def pseudo_dir(config: ml_collections.ConfigDict) -> str:
  """<data.root>/pseudo/<mbt.name>: where --mode=pseudolabel writes."""
  return os.path.join(config.data.root, 'pseudo', config.mbt.name)


def target_raw_dir(config: ml_collections.ConfigDict) -> str:
  """The raw Cityscapes-layout folder of the target: data.cityscapes_dir, or the embedded benchmark's."""
  from rtda_jax.data import synthetic
  if config.data.target != 'cityscapes':
    raise ValueError(f'Pseudo-labels are written in the Cityscapes layout, but config.data.target is '
                     f'{config.data.target!r}; set config.data.target=cityscapes.')
  return synthetic.ensure_domains(config.data, ('cityscapes',))['cityscapes']  # not the source's benchmark


# ---- the two passes -------------------------------------------------------------------------------------------------


def _predict_step(method, scales, flip, agreement, members, images, thresholds=None):
  probs = member_probs(method, members, images, images.shape[1:3], scales, flip)  # members x [B, H, W, C]
  return ensemble_scores(probs, thresholds, agreement)


def _selected(batch: dict[str, np.ndarray], keep: frozenset[str] | None) -> np.ndarray:
  """bool [B]: the real examples of the batch that are among the selected names (`keep`; None: every image)."""
  if keep is None:
    return np.asarray(batch['valid'])
  return np.asarray(batch['valid'], bool) & np.array([str(n) in keep for n in batch['name']], bool)


def _predictions(method: base.Method, members: Any, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                 split: str, thresholds: np.ndarray | None = None, agreement: bool = False,
                 keep: frozenset[str] | None = None
                 ) -> Iterator[tuple[dict[str, np.ndarray], jax.Array, jax.Array, jax.Array | None]]:
  """(batch, preds [B, H, W] uint8, score [B, H, W] float32, agree [B, H, W] bool or None) of `ensemble_scores`
  over the target `split`, sharded on the mesh. With `keep` (the selected names), batches without a selected image
  are skipped on one process (several must all run every batch: the step is a collective)."""
  from rtda_jax.data import pipeline
  batch_size = parallel.check_batch_size(config.data.eval_batch_size, mesh, 'data.eval_batch_size')  # this process's
  skip = keep is not None and jax.process_count() == 1
  step_fn = jax.jit(functools.partial(_predict_step, method, tuple(config.eval.scales), bool(config.eval.flip),
                                      agreement))
  if thresholds is not None:
    thresholds = parallel.replicate(np.asarray(thresholds, np.float32), mesh)
  for batch in pipeline.eval_loader(config.data, config.data.target, split, batch_size):
    if skip and not _selected(batch, keep).any():
      continue
    images = parallel.shard_batch(batch['image'], mesh)
    yield batch, *step_fn(members, images, thresholds)


def pseudo_label_thresholds(method: base.Method, members: Any, config: ml_collections.ConfigDict,
                            mesh: jax.sharding.Mesh, split: str,
                            keep: frozenset[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """First pass: (thresholds [C] of mbt.rule, histogram [C, num_bins] int64) over the whole split (or its images
  named in `keep`), summed over processes. The histogram is of the ensemble's confidence per predicted class, for
  every rule."""
  mbt = config.mbt
  num_classes = config.model.num_classes
  hist_fn = jax.jit(functools.partial(confidence_histogram, num_classes=num_classes, num_bins=mbt.num_bins),
                    out_shardings=parallel.replicated(mesh))
  total = np.zeros((num_classes, mbt.num_bins), np.int64)
  for batch, preds, confidence, _ in _predictions(method, members, config, mesh, split, keep=keep):
    valid = parallel.shard_batch(_selected(batch, keep), mesh)
    total += np.asarray(jax.device_get(hist_fn(preds, confidence, valid)), np.int64)
  return rule_thresholds(total, config), total


def write_pseudo_labels(method: base.Method, members: Any, config: ml_collections.ConfigDict,
                        mesh: jax.sharding.Mesh, out_dir: str, thresholds: np.ndarray, split: str,
                        keep: frozenset[str] | None = None) -> dict[str, Any]:
  """Second pass: the labels mbt.rule keeps with `thresholds`, of every image of `split` (or of those named in
  `keep`; the others are not written), as label-id PNGs under `out_dir` (images linked)."""
  rule = check_rule(config)
  raw_dir = target_raw_dir(config)
  kept = np.zeros(config.model.num_classes + 1, np.int64)  # pixels per class kept, and ignored (last)
  disagreeing = 0
  num_images = 0
  for batch, preds, score, agree in _predictions(method, members, config, mesh, split,
                                                 thresholds=thresholds if rule == 'cbst' else None,
                                                 agreement=rule == 'agreement', keep=keep):
    preds, score = parallel.local_rows(preds), parallel.local_rows(score)
    agree = None if agree is None else parallel.local_rows(agree)
    for i in np.flatnonzero(_selected(batch, keep)):
      name = str(batch['name'][i])
      label = select_labels(rule, preds[i], score[i], thresholds, None if agree is None else agree[i])  # [H, W]
      raw_image = os.path.join(raw_dir, name)
      with Image.open(raw_image) as im:
        size = im.size  # (W, H) of the raw image: the label must pair with it; the builder resizes both
      write_label(os.path.join(out_dir, label_name(name)), label, size)
      link_or_copy(raw_image, os.path.join(out_dir, name))
      kept += np.bincount(np.minimum(label.reshape(-1), config.model.num_classes),
                          minlength=config.model.num_classes + 1)
      disagreeing += 0 if agree is None else int((~agree[i]).sum())
      num_images += 1
  # Each process wrote its own block of the split: the totals of all.
  kept, disagreeing, num_images = (parallel.process_sum(kept), int(parallel.process_sum(np.int64(disagreeing))),
                                   int(parallel.process_sum(np.int64(num_images))))
  stats = {'num_images': num_images, 'kept_fraction': float(kept[:-1].sum() / max(1, kept.sum())),
           'pixels_per_class': {n: int(k) for n, k in zip(labels_lib.CLASS_NAMES, kept[:-1])},
           'ignored_pixels': int(kept[-1])}
  if rule == 'agreement':
    stats['disagreeing_pixels'] = disagreeing  # pixels where some member's argmax differs from the ensemble's
  return stats


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def make_pseudo_labels(method: base.Method, members: Any, config: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh, out_dir: str | None = None,
                       selection: select_lib.Selection | None = None) -> dict[str, Any]:
  """Both passes; writes a complete raw Cityscapes-layout folder at `out_dir` (default `pseudo_dir(config)`): the
  pseudo-labelled `mbt.split` (only the `selection`'s images, when given, with selection.json), the other split
  linked unchanged. Written beside it and swapped in when complete."""
  out_dir = out_dir or pseudo_dir(config)
  split = config.mbt.split
  raw_dir = target_raw_dir(config)
  if os.path.abspath(raw_dir) == os.path.abspath(out_dir):
    raise ValueError(f'The pseudo-label folder {out_dir} is the target raw folder itself; choose another mbt.name.')
  keep = None if selection is None else frozenset(selection.names)
  thresholds, histogram = pseudo_label_thresholds(method, members, config, mesh, split, keep)
  logging.info('Pseudo-label thresholds: %s', dict(zip(labels_lib.CLASS_NAMES, np.round(thresholds, 4))))
  tmp = f'{out_dir}.tmp'
  if jax.process_index() == 0:
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
  _sync('pseudo_tmp_ready')
  stats = write_pseudo_labels(method, members, config, mesh, tmp, thresholds, split, keep)
  _sync('pseudo_written')
  if selection is not None and stats['num_images'] != selection.k:
    raise RuntimeError(f'{stats["num_images"]} images of the {split} split were pseudo-labelled, not the '
                       f'{selection.k} selected: the split changed since the selection; run again.')
  info = {'split': split, 'raw_dir': os.path.abspath(raw_dir), **rule_info(config), 'thresholds': dict(zip(
      labels_lib.CLASS_NAMES, (float(t) for t in thresholds))), 'predicted_pixels_per_class': dict(zip(
          labels_lib.CLASS_NAMES, (int(n) for n in histogram.sum(axis=1)))), **stats}
  if selection is not None:
    info['selection'] = selection.summary()
  if jax.process_index() == 0:
    for other in ('train', 'val'):
      if other != split:
        link_split(raw_dir, tmp, other)
    files.write_json(os.path.join(tmp, INFO_FILE), info)
    if selection is not None:
      files.write_json(os.path.join(tmp, select_lib.SELECTION_FILE), selection.record())
    data_lib.replace_folder(tmp, out_dir)
  _sync('pseudo_done')
  return {**info, 'pseudo_dir': out_dir}


# ---- --mode=pseudolabel ---------------------------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates the MBT ensemble of `config.mbt.workdirs` (eval.json in `workdir`) and writes its pseudo-labels."""
  from rtda_jax.data import builders
  parallel.initialize_distributed()
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(config.data.eval_batch_size, mesh, 'data.eval_batch_size')
  check_rule(config)  # a wrong rule fails before any model or data work
  select_lib.check_selection(config)
  workdirs = member_workdirs(config)
  method, members, steps = load_members(config, workdirs)  # before any data work: a missing run fails fast
  network = select_lib.feature_network(config)  # the 'fd' rule's features: a missing run or file fails fast too
  builders.prepare(config.data, raw_splits=evaluate.raw_splits(config))
  selection = select_lib.select_for_self_training(config, mesh, network)
  if jax.process_index() == 0:
    files.write_atomic(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2, sort_keys=True))
  members = parallel.replicate(members, mesh)
  result = evaluate_ensemble(method, members, config, mesh, step=min(steps), workdir=workdir)
  parallel.say(evaluate.format_table(result))
  info = make_pseudo_labels(method, members, config, mesh, selection=selection)
  info = {'members': [{'workdir': w, 'step': s} for w, s in zip(workdirs, steps)], **info}
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, INFO_FILE), info)
    if selection is not None:
      files.write_json(os.path.join(workdir, select_lib.SELECTION_FILE), selection.record())
  chosen = '' if selection is None else (f' selected by the {selection.rule!r} rule from {selection.pool_size} '
                                         f'(selection.json)')
  parallel.say(f"Pseudo-labels ({info['rule']} rule) of {info['num_images']} {info['split']} images{chosen} in "
               f"{info['pseudo_dir']} ({100 * info['kept_fraction']:.1f}% of pixels kept). Self-train with "
               f"--config.selftrain.pseudo_dir={info['pseudo_dir']}")
  return {'eval': result, 'pseudo': info}
