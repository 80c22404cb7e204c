"""Evaluation: confusion matrix over the whole split, optional flip / multi-scale TTA, eval.json and colour-coded
prediction images. `--mode=evaluate` loads the last (or a named, or the best) checkpoint.

`eval.protocol` says how the images are fed and at which label size they are scored, as the reference papers do:
- 'stored': the val split as the builder stores it (`data.cityscapes_size`), scored at that size.
- 'adaptsegnet' (alias 'fda'; AdaptSegNet's evaluate_cityscapes.py, FDA's evaluation_multi.py): the image resized
  from its raw file to `eval.input_size` (PIL bicubic, as their Cityscapes loaders), the prediction upsampled
  bilinearly to the raw label resolution (1024x2048 for real Cityscapes) and scored against the raw labels.
- 'dacs' (DACS's evaluateUDA.py): image (PIL bilinear: scipy's imresize) and label (nearest) resized from the raw
  files to `eval.input_size` and scored there. A split stored at `eval.input_size` holds exactly that (the builder
  resizes from the raw files the same way), so the stored build is read then; any other size reads the raw one.
The prediction is upsampled to the scored size with `eval.align_corners` (True: AdaptSegNet/FDA/DACS's
`align_corners=True`) by PyTorch's bilinear formula (models.resize); 'stored' with align_corners False keeps
`jax.image.resize` (antialiased when a TTA scale makes it downsample), as before the protocols existed.

`eval.class_set` says which classes the means average over (metrics.CLASS_SETS): 'all', or 'synthia16' for a
SYNTHIA-trained model (mIoU over the 16 classes SYNTHIA labels, `miou` = `miou_16`, and mIoU* over 13, `miou_13`;
terrain, truck and train are null in eval.json and '-' in the table); 'auto' picks 'synthia16' when
`data.source` is 'synthia'. eval.json also holds the Dice coefficient of every class and its mean, for every set.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from rtda_jax import files
from rtda_jax import labels as labels_lib
from rtda_jax import metrics as metrics_lib
from rtda_jax import parallel
from rtda_jax.errors import ConfigError
from rtda_jax.models import classes

if TYPE_CHECKING:  # the model code is imported where it runs, so that --mode=prepare can read the protocol
  from rtda_jax.methods import base

PROTOCOLS = ('stored', 'adaptsegnet', 'dacs')
PROTOCOL_ALIASES = {'fda': 'adaptsegnet'}
# PIL filter each protocol resizes the raw image with: AdaptSegNet's and FDA's loaders use Image.BICUBIC, DACS's
# scipy.misc.imresize (PIL bilinear).
_RESAMPLE = {'adaptsegnet': 'bicubic', 'dacs': 'bilinear'}


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How the evaluation images are fed and scored (`get_protocol`)."""
  name: str  # 'stored' | 'adaptsegnet' | 'dacs'
  raw: bool  # read the split built at its raw resolution (else the stored build)
  image_size: tuple[int, int] | None  # [H, W] the image is resized to before the model (None: as read)
  image_resample: str  # PIL filter of that resize
  label_size: tuple[int, int] | None  # [H, W] the label is resized to (nearest) and scored at (None: as read)
  align_corners: bool | None  # upsampling of the prediction to the label size; None = jax.image.resize


def get_protocol(config: ml_collections.ConfigDict) -> Protocol:
  """The checked evaluation protocol of `config.eval` (see the module docstring)."""
  ev = config.eval
  name = PROTOCOL_ALIASES.get(ev.protocol, ev.protocol)
  if name not in PROTOCOLS:
    raise ValueError(f'config.eval.protocol={ev.protocol!r} is not an evaluation protocol; choose one of '
                     f'{PROTOCOLS + tuple(PROTOCOL_ALIASES)} (e.g. --config.eval.protocol=adaptsegnet).')
  align_corners = bool(ev.align_corners)
  if name == 'stored':
    return Protocol(name, False, None, 'bilinear', None, True if align_corners else None)
  input_size = tuple(int(s) for s in ev.input_size)
  if len(input_size) != 2 or min(input_size) <= 0:
    raise ValueError(f'config.eval.input_size={tuple(ev.input_size)} must be [H, W] with positive sizes.')
  if name == 'adaptsegnet':
    return Protocol(name, True, input_size, _RESAMPLE[name], None, align_corners)
  stored = tuple(int(s) for s in config.data[f'{config.data.target}_size'])
  return Protocol(name, input_size != stored, input_size, _RESAMPLE[name], input_size, align_corners)


def get_class_set(config: ml_collections.ConfigDict) -> str:
  """The checked evaluation class set of `config.eval.class_set` ('auto': 'synthia16' for data.source 'synthia' or
  a 16-output net, model.output_classes='synthia16')."""
  value = config.eval.get('class_set', 'auto')
  if value == 'auto':
    sixteen = config.data.source == 'synthia' or config.model.get('output_classes') == 'synthia16'
    return 'synthia16' if sixteen else 'all'
  if value not in metrics_lib.CLASS_SETS:
    raise ConfigError(f'config.eval.class_set={value!r} is not a class set; choose one of '
                      f"{('auto',) + tuple(metrics_lib.CLASS_SETS)} (e.g. --config.eval.class_set=synthia16).")
  return value


def raw_splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The target splits `builders.prepare(..., raw_splits=...)` must build at their raw resolution for this
  config's evaluation: (eval.split,) when the protocol reads the raw files, else ()."""
  return (config.eval.split,) if get_protocol(config).raw else ()


def resize_scores(scores: jax.Array, out_shape: tuple[int, int], align_corners: bool | None) -> jax.Array:
  """Logits or probabilities [B, h, w, C] -> [B, H, W, C] bilinear, in the protocol's convention (`align_corners`
  of PyTorch's F.interpolate; None = jax.image.resize, the 'stored' protocol's)."""
  if align_corners is None:
    return jax.image.resize(scores, (scores.shape[0], *out_shape, scores.shape[-1]), 'bilinear')
  from rtda_jax.models import resize  # pylint: disable=g-import-not-at-top
  return resize.resize_bilinear(scores, out_shape, align_corners)


def predict_probs(method: base.Method, variables: Any, images: jax.Array, out_shape: tuple[int, int],
                  scales: tuple[float, ...] = (1.0,), flip: bool = False,
                  align_corners: bool | None = None) -> jax.Array:
  """Softmax probabilities [B, h, w, C] at `out_shape`, averaged over scales (and horizontal flips); the logits are
  upsampled to `out_shape` before the softmax (as the references upsample logits before the argmax)."""
  from rtda_jax.methods import base  # pylint: disable=g-import-not-at-top,redefined-outer-name
  images = base.to_float_images(images)
  b, h, w, _ = images.shape
  total = 0.0
  for scale in scales:
    x = images
    if scale != 1.0:
      x = jax.image.resize(images, (b, int(round(h * scale)), int(round(w * scale)), 3), 'bilinear')
    views = [(x, False)] + ([(x[:, :, ::-1], True)] if flip else [])
    for view, flipped in views:
      logits = method.predict_logits(variables, view)
      if flipped:
        logits = logits[:, :, ::-1]
      logits = resize_scores(logits, out_shape, align_corners)
      total = total + jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return total / (len(scales) * (2 if flip else 1))


ProbsFn = Callable[[Any, jax.Array, tuple[int, int]], jax.Array]  # (variables, images, out_shape) -> probs


def _eval_step(probs_fn: ProbsFn, num_classes: int, variables, images, labels):
  probs = probs_fn(variables, images, labels.shape[1:3])
  preds = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  cm = metrics_lib.confusion_matrix(preds, labels.astype(jnp.int32), num_classes)
  return cm, preds.astype(jnp.uint8)


def evaluate(method: base.Method, variables: Any, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *,
             step: int, workdir: str | None = None, split: str | None = None,
             probs_fn: ProbsFn | None = None) -> dict[str, Any]:
  """Evaluates `variables` on the target domain's split; writes eval.json and predictions/ into `workdir`.

  Images are fed and scored as `eval.protocol` says (get_protocol): the labels come at the scored size, and
  `probs_fn(variables, images, out_shape)` gives the class probabilities at `out_shape` = that size; default: the
  method's model with the configured test-time augmentation and the protocol's upsampling (an ensemble passes its
  own). Memory: one batch of `data.eval_batch_size` images at a time.
  """
  from rtda_jax.data import pipeline
  protocol = get_protocol(config)
  class_set = get_class_set(config)
  split = split or config.eval.split
  dataset = config.data.target
  # This process's rows of each global batch of data.eval_batch_size images.
  batch_size = parallel.check_batch_size(config.data.eval_batch_size, mesh, 'data.eval_batch_size')
  num_classes = config.model.num_classes
  output_ids = classes.output_ids(config.model.get('output_classes'))
  if probs_fn is None:
    probs_fn = functools.partial(predict_probs, method, scales=tuple(config.eval.scales), flip=bool(config.eval.flip),
                                 align_corners=protocol.align_corners)
  step_fn = jax.jit(functools.partial(_eval_step, probs_fn, num_classes))
  variables = parallel.replicate(variables, mesh)
  total = np.zeros((num_classes, num_classes), np.int64)
  num_images, shown = 0, []
  loader = pipeline.eval_loader(config.data, dataset, split, batch_size, raw=protocol.raw,
                                image_size=protocol.image_size, label_size=protocol.label_size,
                                image_resample=protocol.image_resample)
  for batch in loader:
    valid = np.asarray(batch['valid'])
    label = classes.ignore_absent(batch['label'], output_ids)  # a 16-output net: scored on its 16 classes only
    sharded = parallel.shard_batch({'image': batch['image'], 'label': label}, mesh)
    cm, preds = step_fn(variables, sharded['image'], sharded['label'])
    total = metrics_lib.accumulate(total, jax.device_get(cm))
    num_images += int(valid.sum())
    if len(shown) < config.eval.num_prediction_images and jax.process_index() == 0:
      preds = parallel.local_rows(preds)[: len(valid)]
      for i in np.flatnonzero(valid)[: config.eval.num_prediction_images - len(shown)]:
        shown.append((batch['image'][i], batch['label'][i], preds[i]))
  num_images = int(parallel.process_sum(np.int64(num_images)))  # each process counted its own block of the split
  result = {'dataset': dataset, 'split': split, 'step': int(step), 'num_images': num_images,
            'protocol': protocol.name, 'input_size': list(loader.image_size), 'label_size': list(loader.label_size),
            **metrics_lib.compute_metrics(total, labels_lib.CLASS_NAMES)}
  result.update(metrics_lib.class_set_metrics(total, labels_lib.CLASS_NAMES, class_set))
  # [C, C] pixel counts, rows = ground truth, columns = prediction (the confusion plot of rtda_jax/report.py).
  result['confusion'] = np.asarray(total, np.int64).tolist()
  if workdir and jax.process_index() == 0:
    write_eval(workdir, result, shown)
  return result


def write_eval(workdir: str, result: dict[str, Any], shown: list[tuple[np.ndarray, ...]]) -> None:
  """eval.json (atomically) and image | ground truth | prediction strips in predictions/."""
  files.write_json(os.path.join(workdir, 'eval.json'), result)
  out_dir = os.path.join(workdir, 'predictions')
  os.makedirs(out_dir, exist_ok=True)
  for i, strip in enumerate(prediction_strips(shown)):
    Image.fromarray(strip).save(os.path.join(out_dir, f'{i:02d}.png'))


def prediction_strips(shown: list[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
  """[(image [h,w,3], label [H,W], pred [H,W])] -> [H, 3W, 3] uint8 strips: image (resized bilinear to the label
  size where the protocol fed it at another), ground truth, prediction."""
  strips = []
  for img, lbl, pred in shown:
    img = np.asarray(img, np.uint8)
    if img.shape[:2] != lbl.shape:
      img = np.asarray(Image.fromarray(img).resize(lbl.shape[::-1], Image.BILINEAR))
    strips.append(np.concatenate([img, labels_lib.colorize(lbl), labels_lib.colorize(pred)], axis=1))
  return strips


def format_table(result: dict[str, Any]) -> str:
  """The per-class IoU (and Dice) table printed at the end of a run. A class outside the evaluation class set shows
  '-', one of the set without a score (absent from ground truth and prediction) 'n/a'."""
  head = f"{result['dataset']}/{result['split']} step {result['step']}: {result['num_images']} images"
  if result.get('protocol'):  # results written before the protocols have none
    fed, scored = (result[k] for k in ('input_size', 'label_size'))
    head += f" (protocol {result['protocol']}: fed at {fed[0]}x{fed[1]}, scored at {scored[0]}x{scored[1]})"
  class_set = result.get('class_set', 'all')  # results written before the class sets have none
  inside = metrics_lib.class_set_names(class_set, tuple(result['per_class_iou']))
  # {row label: key}: 'mIoU (16)' for the mean over the whole set, 'mIoU* (13)' for a smaller one (the papers' star).
  means = {f"mIoU{'' if len(v) == len(inside) else '*'} ({len(v)})": k
           for k, v in metrics_lib.SUBSET_MIOUS[class_set].items()} or {'mIoU': 'miou'}
  lines = [head]
  if class_set != 'all':
    parts = [label + ('' if len(v) == len(inside) else f" without {', '.join(n for n in inside if n not in v)}")
             for label, v in zip(means, metrics_lib.SUBSET_MIOUS[class_set].values())]
    lines.append(f"class set {class_set}: {', '.join(parts)}; '-' = not in the set")
  dice = result.get('per_class_dice')  # results written before Dice have none
  lines.append(f"{'class':<15}{'IoU':>8}" + (f"{'Dice':>8}" if dice else ''))
  cell = lambda name, v: f"{'-' if name not in inside else 'n/a' if v is None else f'{v:.2f}':>8}"
  for name, iou in result['per_class_iou'].items():
    lines.append(f'{name:<15}{cell(name, iou)}' + (cell(name, dice.get(name)) if dice else ''))
  for label, key in means.items():
    lines.append(f"{label:<15}{'n/a' if result[key] is None else f'{result[key]:.2f}':>8}")
  tail = (f"pixel acc. {result['pixel_accuracy']:.2f}  mean class acc. {result['mean_class_accuracy']:.2f}  "
          f"FWIoU {result['fwiou']:.2f}")
  if result.get('mean_dice') is not None:
    tail += f"  mean Dice {result['mean_dice']:.2f}"
  lines.append(tail)
  return '\n'.join(lines)


def scalars(result: dict[str, Any]) -> dict[str, float]:
  """The TensorBoard / metrics.jsonl scalars of an evaluation: eval/miou, eval/pixel_accuracy, eval/mean_dice and the
  class set's named means (eval/miou_16, eval/miou_13); undefined ones (None) are left out."""
  keys = ('miou', 'pixel_accuracy', 'mean_dice', *metrics_lib.SUBSET_MIOUS[result.get('class_set', 'all')])
  return {f'eval/{k}': result[k] for k in keys if result.get(k) is not None}


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """--mode=evaluate: restore the last (or config.eval.checkpoint's) checkpoint of `workdir` and evaluate it."""
  from rtda_jax import checkpointing, methods
  from rtda_jax.data import builders
  from rtda_jax.methods import base  # pylint: disable=redefined-outer-name
  parallel.initialize_distributed()
  # Builds the evaluation data if it is not built yet (a no-op otherwise), at the raw size where the protocol needs.
  builders.prepare(config.data, raw_splits=raw_splits(config))
  mesh = parallel.make_mesh(config.num_devices)
  method = methods.get_method(config)
  ckpt = checkpointing.Checkpointer(workdir)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints/last: train first (--mode=train) or pass '
                            f'--workdir of a trained run.')
  # A freshly initialised state is the restore target (shapes, dtypes, tree structure).
  target = method.init(jax.random.PRNGKey(config.seed), base.train_shapes(config))
  state, meta = ckpt.restore(target, step=config.eval.checkpoint)
  ckpt.close()
  result = evaluate(method, method.eval_variables(state), config, mesh, step=meta['step'], workdir=workdir)
  logging.info('\n%s', format_table(result))
  parallel.say(format_table(result))
  return result
