"""Evaluation at full label resolution: confusion matrix over the whole split, optional flip / multi-scale TTA,
eval.json and colour-coded prediction images. `--mode=evaluate` loads the last (or a named, or the best) checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from rtda_jax import labels as labels_lib
from rtda_jax import metrics as metrics_lib
from rtda_jax import parallel
from rtda_jax.methods import base


def predict_probs(method: base.Method, variables: Any, images: jax.Array, out_shape: tuple[int, int],
                  scales: tuple[float, ...] = (1.0,), flip: bool = False) -> jax.Array:
  """Softmax probabilities [B, h, w, C] at `out_shape`, averaged over scales (and horizontal flips)."""
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
      logits = jax.image.resize(logits, (b, *out_shape, logits.shape[-1]), 'bilinear')
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

  `probs_fn(variables, images, out_shape)` gives the class probabilities; default: the method's model with the
  configured test-time augmentation (an ensemble passes its own).
  """
  from rtda_jax.data import pipeline
  split = split or config.eval.split
  dataset = config.data.target
  batch_size = config.data.eval_batch_size
  parallel.check_batch_size(batch_size, mesh, 'data.eval_batch_size')
  num_classes = config.model.num_classes
  if probs_fn is None:
    probs_fn = functools.partial(predict_probs, method, scales=tuple(config.eval.scales), flip=bool(config.eval.flip))
  step_fn = jax.jit(functools.partial(_eval_step, probs_fn, num_classes))
  variables = parallel.replicate(variables, mesh)
  total = np.zeros((num_classes, num_classes), np.int64)
  num_images, shown = 0, []
  for batch in pipeline.eval_loader(config.data, dataset, split, batch_size):
    valid = np.asarray(batch['valid'])
    sharded = parallel.shard_batch({'image': batch['image'], 'label': batch['label']}, mesh)
    cm, preds = step_fn(variables, sharded['image'], sharded['label'])
    total = metrics_lib.accumulate(total, jax.device_get(cm))
    num_images += int(valid.sum())
    if len(shown) < config.eval.num_prediction_images and jax.process_index() == 0:
      preds = parallel.local_rows(preds)[: len(valid)]
      for i in np.flatnonzero(valid)[: config.eval.num_prediction_images - len(shown)]:
        shown.append((batch['image'][i], batch['label'][i], preds[i]))
  result = {'dataset': dataset, 'split': split, 'step': int(step), 'num_images': num_images,
            **metrics_lib.compute_metrics(total, labels_lib.CLASS_NAMES)}
  if workdir and jax.process_index() == 0:
    write_eval(workdir, result, shown)
  return result


def write_eval(workdir: str, result: dict[str, Any], shown: list[tuple[np.ndarray, ...]]) -> None:
  """eval.json (atomically) and image | ground truth | prediction strips in predictions/."""
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, 'eval.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(result, f, indent=2)
  os.replace(tmp, os.path.join(workdir, 'eval.json'))
  out_dir = os.path.join(workdir, 'predictions')
  os.makedirs(out_dir, exist_ok=True)
  for i, strip in enumerate(prediction_strips(shown)):
    Image.fromarray(strip).save(os.path.join(out_dir, f'{i:02d}.png'))


def prediction_strips(shown: list[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
  """[(image [H,W,3], label [H,W], pred [H,W])] -> [H, 3W, 3] uint8 strips: image, ground truth, prediction."""
  return [np.concatenate([np.asarray(img, np.uint8), labels_lib.colorize(lbl), labels_lib.colorize(pred)], axis=1)
          for img, lbl, pred in shown]


def format_table(result: dict[str, Any]) -> str:
  """The per-class IoU table printed at the end of a run."""
  lines = [f"{result['dataset']}/{result['split']} step {result['step']}: {result['num_images']} images",
           f"{'class':<15}{'IoU':>8}"]
  for name, iou in result['per_class_iou'].items():
    lines.append(f"{name:<15}{'n/a' if iou is None else f'{iou:8.2f}':>8}")
  lines.append(f"{'mIoU':<15}{result['miou']:8.2f}")
  lines.append(f"pixel acc. {result['pixel_accuracy']:.2f}  mean class acc. {result['mean_class_accuracy']:.2f}  "
               f"FWIoU {result['fwiou']:.2f}")
  return '\n'.join(lines)


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """--mode=evaluate: restore the last (or config.eval.checkpoint's) checkpoint of `workdir` and evaluate it."""
  from rtda_jax import checkpointing, trainer
  from rtda_jax.data import builders
  parallel.initialize_distributed()
  builders.prepare(config.data)  # builds the evaluation data if it is not built yet (a no-op otherwise)
  mesh = parallel.make_mesh(config.num_devices)
  method = base.get_method(config)
  ckpt = checkpointing.Checkpointer(workdir)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints/last: train first (--mode=train) or pass '
                            f'--workdir of a trained run.')
  # A freshly initialised state is the restore target (shapes, dtypes, tree structure).
  target = method.init(jax.random.PRNGKey(config.seed), trainer.train_shapes(config))
  state, meta = ckpt.restore(target, step=config.eval.checkpoint)
  ckpt.close()
  result = evaluate(method, method.eval_variables(state), config, mesh, step=meta['step'], workdir=workdir)
  logging.info('\n%s', format_table(result))
  print(format_table(result))
  return result
