"""The one training loop every method runs through: mesh, states, data, jitted step, logs, checkpoints, evaluation.

The trainer knows a method only through `rtda_jax.methods.base.Method`: which domains its step needs, `init`,
`train_step`, and which variables to evaluate.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from rtda_jax import checkpointing, evaluate, parallel
from rtda_jax.methods import base

# Folds of the root key (config.seed): one stream per purpose, never reused.
_INIT, _DATA, _STEP = 0, 1, 2


def train_shapes(config: ml_collections.ConfigDict) -> dict[str, tuple[int, int]]:
  return {'source': tuple(config.data.source_train_size), 'target': tuple(config.data.target_train_size)}


def data_seed(seed: int, domain: str) -> int:
  """A 31-bit integer seed for a domain's data order, derived from config.seed."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _DATA), ('source', 'target').index(domain))
  return int(jax.random.randint(key, (), 0, 2**31 - 1))


class MetricWriter:
  """metrics.jsonl (one JSON object per logged step) and TensorBoard event files (tensorboardX, no TensorFlow)."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._truncate_after(resume_step)
    self.enabled = jax.process_index() == 0
    self.tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def _truncate_after(self, step: int) -> None:
    """Drops lines logged after the checkpoint a run resumes from, so metrics.jsonl has each step once."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
    with open(self.path, 'w') as f:
      f.writelines(kept)

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **values}) + '\n')
    for k, v in values.items():
      self.tb.add_scalar(k, v, step)
    self.tb.flush()

  def images(self, step: int, name: str, images: list[np.ndarray]) -> None:
    if self.enabled:
      for i, img in enumerate(images):
        self.tb.add_image(f'{name}/{i}', img, step, dataformats='HWC')
      self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def _check_finite(metrics: dict[str, float], step: int, checkpointer: checkpointing.Checkpointer, workdir: str):
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if bad:
    last = checkpointer.latest_step()
    kept = (f'the last good checkpoint (step {last}) is kept in {workdir}/checkpoints/last'
            if last is not None else 'no checkpoint had been written yet')
    raise FloatingPointError(f'Non-finite values at step {step}: {bad}; {kept}. Lower train.learning_rate, check '
                             f'the data, or resume from that checkpoint with other settings.')


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.method` for `config.train.num_steps` steps (resuming from `workdir`), evaluates, returns eval."""
  from rtda_jax.data import builders, pipeline
  parallel.initialize_distributed()
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(config.train.batch_size, mesh)
  _write_config(config, workdir)
  method = base.get_method(config)
  builders.prepare(config.data)
  train_data = {d: method.train_data(d) for d in method.domains}
  for data_config, _ in train_data.values():
    if data_config is not config.data:
      builders.prepare(data_config)

  root = jax.random.PRNGKey(config.seed)
  state = method.init(jax.random.fold_in(root, _INIT), train_shapes(config))
  shapes = train_shapes(config)
  iterators = {d: pipeline.train_loader(data_config, dataset, 'train', config.train.batch_size,
                                        seed=data_seed(config.seed, d), shape=shapes[d])
               for d, (data_config, dataset) in train_data.items()}

  checkpointer = checkpointing.Checkpointer(workdir, config.train.max_checkpoints)
  start, best_miou, result = 0, -1.0, None
  if checkpointer.latest_step() is not None:
    state, meta = checkpointer.restore(state, iterators)
    start, best_miou = int(meta['step']), float(meta['best_miou'])
    print(f'Resumed from {workdir} at step {start}.')
  state = parallel.replicate(state, mesh)

  rep = parallel.replicated(mesh)
  step_fn = jax.jit(method.train_step, donate_argnums=0, out_shardings=(rep, rep))
  writer = MetricWriter(workdir, resume_step=start)
  t = config.train

  def save(step: int, best: bool = False) -> None:
    checkpointer.save(step, state, iterators, {'step': step, 'best_miou': best_miou}, best=best)

  def run_eval(step: int) -> dict[str, Any]:
    nonlocal best_miou
    res = evaluate.evaluate(method, method.eval_variables(state), config, mesh, step=step, workdir=workdir)
    writer.scalars(step, {'eval/miou': res['miou'], 'eval/pixel_accuracy': res['pixel_accuracy']})
    if res['miou'] > best_miou:
      best_miou = res['miou']
      save(step, best=True)
    return res

  pending = None  # the previous step's metrics: checked one step late so the device is never idle
  tick, tick_step = time.perf_counter(), start
  with checkpointing.StopRequest() as stop, tqdm(total=t.num_steps, initial=start, desc=config.name,
                                                 disable=jax.process_index() != 0, dynamic_ncols=True) as bar:
    last_step = t.num_steps if not t.stop_after_steps else min(t.num_steps, start + t.stop_after_steps)
    for step in range(start + 1, last_step + 1):
      batch = parallel.shard_batch({d: next(it) for d, it in iterators.items()}, mesh)
      state, metrics = step_fn(state, batch)
      if pending is not None:
        _check_finite({'loss': float(pending[1]['loss'])}, pending[0], checkpointer, workdir)
      pending = (step, metrics)
      bar.update(1)
      if step % t.log_every_steps == 0 or step == t.num_steps:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(values, step, checkpointer, workdir)
        now = time.perf_counter()
        values['images_per_sec'] = (step - tick_step) * t.batch_size * len(method.domains) / (now - tick)
        tick, tick_step = now, step
        writer.scalars(step, values)
        bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{values['images_per_sec']:.1f}")
      if step % t.checkpoint_every_steps == 0 or step == last_step or stop:
        _check_finite({'loss': float(metrics['loss'])}, step, checkpointer, workdir)
        save(step)
      if step % config.eval.every_steps == 0 or step == t.num_steps:
        result = run_eval(step)
        bar.write(evaluate.format_table(result))
      if stop:
        logging.warning('Stopped by signal %d at step %d; checkpoint saved in %s.', stop.signum, step, workdir)
        break
  if result is None and not stop and last_step == t.num_steps:  # resumed a finished run: evaluate it again
    result = run_eval(t.num_steps)
  writer.close()
  checkpointer.close()
  return result
