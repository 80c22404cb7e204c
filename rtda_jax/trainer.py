"""The one training loop every method runs through: mesh, states, data, jitted step, logs, checkpoints, evaluation.

The trainer knows a method only through `rtda_jax.methods.base.Method`: which domains its step needs, `init`,
`train_step`, and which variables to evaluate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from typing import Any, Sequence

import flax
import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metrics as clu_metrics
from clu import parameter_overview as clu_overview
from flax.training import train_state
from tqdm import tqdm

from rtda_jax import checkpointing, errors, evaluate, files, methods, parallel
from rtda_jax.methods import base
from rtda_jax.models import classes
from rtda_jax.workdir import WorkdirLock, record_config

# Folds of the root key (config.seed): one stream per purpose, never reused.
_INIT, _DATA, _STEP = 0, 1, 2


def data_seed(seed: int, domain: str) -> int:
  """A 31-bit integer seed for a domain's data order, derived from config.seed."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _DATA), ('source', 'target').index(domain))
  return int(jax.random.randint(key, (), 0, 2**31 - 1))


def _logged_at_or_before(line: str, step: int) -> bool:
  """Whether a metrics.jsonl line is a record of `step` or earlier; False for a line cut short (a run killed while
  it appended) or blank."""
  try:
    return json.loads(line)['step'] <= step
  except (ValueError, KeyError, TypeError):
    return False


class MetricWriter:
  """metrics.jsonl (one JSON object per logged step) and TensorBoard event files (tensorboardX, no TensorFlow:
  clu.metric_writers imports TensorFlow for its SummaryWriter: README "What the logs say").

  The training scalars a step logs are the means over the interval since the previous log step (`interval_metrics`),
  learning rates their value at the logged step."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = jax.process_index() == 0  # one writer: the other processes of a launch write nothing
    self.tb = None
    if self.enabled:
      self._truncate_after(resume_step)
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def _truncate_after(self, step: int) -> None:
    """Drops lines logged after the checkpoint a run resumes from, so metrics.jsonl has each step once. Process 0
    only, through a temporary file: a second process rewriting it as the first appended lost lines (CI, stop 20)."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line if line.endswith('\n') else line + '\n' for line in f if _logged_at_or_before(line, step)]
    files.write_atomic(self.path, ''.join(kept))

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


# ---- what the logs say: interval means (clu.metrics) and the networks' parameters (clu.parameter_overview) --------

def _is_rate(name: str) -> bool:
  """Learning rates ('lr', 'lr_disc', ...): a schedule's value, logged at the step rather than averaged."""
  return name == 'lr' or name.startswith('lr_')


def interval_metrics(names: Sequence[str]) -> type[clu_metrics.Collection]:
  """The clu.metrics Collection the trainer merges each step's metrics into between two log steps: Average of each
  scalar (the mean over the interval, not the one step that happens to be logged), LastValue of learning rates."""
  bad = [n for n in names if not n.isidentifier() or n.startswith('_')]
  if bad:
    raise ValueError(f'Metric names {bad} of the method\'s train_step are not Python identifiers; clu.metrics '
                     'Collections need identifiers: rename them in the method (e.g. loss_seg, not loss/seg).')
  return clu_metrics.Collection.create(**{
      n: (clu_metrics.LastValue if _is_rate(n) else clu_metrics.Average).from_output(n) for n in names})


def interval_to_json(interval: clu_metrics.Collection) -> dict[str, Any]:
  """The accumulated sums of an interval as JSON-able numbers (float32 totals are exact as Python floats), so a
  checkpoint between two log steps carries the interval and a resumed run logs what the uninterrupted one would."""
  tree = flax.serialization.to_state_dict(jax.device_get(interval))
  return jax.tree.map(lambda x: np.asarray(x).item(), tree)


def interval_from_json(cls: type[clu_metrics.Collection], saved: dict[str, Any] | None
                       ) -> clu_metrics.Collection | None:
  """`cls` with the sums `interval_to_json` wrote (dtypes of `cls.empty()`); None when `saved` is absent (a
  checkpoint of an older version) or holds other metrics (another method): the interval then starts afresh."""
  empty = cls.empty()
  template = flax.serialization.to_state_dict(empty)
  if not saved or jax.tree.structure(saved) != jax.tree.structure(template):
    return None
  return flax.serialization.from_state_dict(
      empty, jax.tree.map(lambda t, v: np.asarray(v, np.asarray(t).dtype), template, saved))


def networks(state: Any) -> dict[str, Any]:
  """{name: params} of every network in a method state: each TrainState field (a tuple of them: `name[i]`) and
  each dict of variables with 'params' (an EMA teacher). Optimiser states, statistics, pools, keys are not networks."""
  found: dict[str, Any] = {}
  for field in dataclasses.fields(state) if dataclasses.is_dataclass(state) else ():
    value = getattr(state, field.name)
    items = ([(f'{field.name}[{i}]', v) for i, v in enumerate(value)] if isinstance(value, (tuple, list)) else
             [(field.name, value)])
    for name, v in items:
      if isinstance(v, train_state.TrainState):
        found[name] = v.params
      elif isinstance(v, (dict, flax.core.FrozenDict)) and 'params' in v:
        found[name] = v['params']
  return found


def parameter_overview(state: Any) -> dict[str, dict[str, Any]]:
  """{network: {'params': count, 'table': clu.parameter_overview table}} of every network of a method state
  (arrays or ShapeDtypeStructs: names, shapes, dtypes and sizes only, no statistics, so no device work)."""
  out = {}
  for name, params in networks(state).items():
    params = flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else params
    out[name] = {'params': int(clu_overview.count_parameters(params)),
                 'table': clu_overview.get_parameter_overview(params, include_stats=False)}
  return out


def format_parameter_overview(overview: dict[str, dict[str, Any]]) -> str:
  """The tables of `parameter_overview`, each under its network's name and count."""
  return '\n'.join(f'{name}: {o["params"]:,} parameters\n{o["table"]}' for name, o in overview.items())


def _check_finite(metrics: dict[str, float], step: int, checkpointer: checkpointing.Checkpointer) -> None:
  """NonFiniteError naming the step, the values and the newest (finite) checkpoint on disk."""
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if bad:
    raise checkpointing.NonFiniteError(
        f'Non-finite values at step {step}: {bad}; {checkpointer.newest_on_disk()}. Lower train.learning_rate, '
        f'check the data, or resume from a kept step with other settings ({checkpointing.RESUME_HINT}).')


def run_seed(config: ml_collections.ConfigDict) -> int:
  """The seed of this run's initialisation, data order and step randomness: config.seed + config.seed_offset."""
  return int(config.seed) + int(config.get('seed_offset', 0))


def check_initialisation(config: ml_collections.ConfigDict) -> None:
  """A `paper`-scale run must start from pretrained weights (or a warm start): from random weights a reference
  recipe trains silently into nonsense (DeepLab-v2 with frozen BN affine: an un-normalised ResNet-101)."""
  m = config.model
  if config.get('scale', 'demo') != 'paper' or m.get('pretrained') or m.get('init_from') or m.get('allow_random_init'):
    return
  hint = m.get('pretrained_hint') or 'ImageNet weights of the backbone'
  raise ValueError(
      f'This `paper` preset needs initial weights: pass --config.model.pretrained=FILE with {hint}, converted once '
      'with `python -m rtda_jax.models.pretrained convert FILE.pth FILE.npz` (README "Initial weights"), or '
      '--config.model.init_from=WORKDIR; --config.model.allow_random_init=True trains from random weights anyway.')


def _watched(metrics: dict[str, Any]) -> dict[str, float]:
  """{'loss': value} (or the first metric of a method without a loss) as a float: the value checked every step."""
  name = 'loss' if 'loss' in metrics else next(iter(metrics))
  return {name: float(metrics[name])}


def _initial_evaluation(method: base.Method, state: Any, config: ml_collections.ConfigDict, mesh: Any, workdir: str,
                        start: int) -> dict[str, Any] | None:
  """With a warm start: the evaluation of the starting model (computed once, kept in eval_init.json)."""
  if not config.model.get('init_from'):
    return None
  path = os.path.join(workdir, 'eval_init.json')
  if start > 0:  # resumed: the starting model is gone; its evaluation is the one kept (if any)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)
  result = evaluate.evaluate(method, method.eval_variables(state), config, mesh, step=0)
  if jax.process_index() == 0:
    print(f'The warm-start model ({config.model.init_from}) before training: mIoU {result["miou"]:.2f}.')
    files.write_json(path, {**result, 'init_from': config.model.init_from})
  return result


def source_stage_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The source-only run that `model.init_from` names when it does not exist yet: this config's data, model,
  seed, devices and training settings, the supervised method, `model.init_steps` steps, no warm start."""
  stage = ml_collections.ConfigDict(config.to_dict())
  stage.name, stage.method = 'source_only', 'supervised'
  stage.model.init_from, stage.model.init_steps, stage.seed_offset = None, 0, 0
  stage.train.num_steps = stage.eval.every_steps = int(config.model.init_steps)
  stage.train.checkpoint_every_steps = min(int(config.train.checkpoint_every_steps), stage.train.num_steps)
  stage.train.stop_after_steps = 0  # a job-slot limit is this run's, not its first stage's
  return stage


def _check_stage_source(config: ml_collections.ConfigDict, stage_dir: str) -> None:
  """The automatic first stage must have trained on this run's source (a `--config.data.source=synthia` override
  would otherwise start from, or train into, the GTA5 demo's `runs/source_only`)."""
  path = os.path.join(stage_dir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    stage_source = json.load(f).get('data', {}).get('source')
  if stage_source and stage_source != config.data.source:
    raise errors.ConfigError(
        f'model.init_from={config.model.init_from!r} is a source-only run on {stage_source!r}, but this run '
        f'adapts from {config.data.source!r}: use the config\'s `{config.data.source}` preset (e.g. '
        f'configs/adv.py:synthia), or --config.model.init_from=<a run trained on {config.data.source}>.')


def _ensure_source_stage(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Trains (or finishes) the warm-start run first when `model.init_from` names a workdir whose newest checkpoint is
  short of `model.init_steps` > 0 (the two-stage demo: source-only, then adaptation from it), holding that
  workdir's lock while it trains. Interrupted when that stage was stopped (signal) before its end: this run must
  not start from a half-trained model."""
  spec = config.model.get('init_from')
  if not spec or not config.model.get('init_steps') or checkpointing.Checkpointer.has_checkpoint(workdir):
    return
  stage_dir, _, _ = checkpointing.parse_init_from(spec)
  _check_stage_source(config, stage_dir)
  steps = checkpointing.checkpoint_steps(os.path.join(stage_dir, 'checkpoints', 'last'))
  if steps and steps[-1] >= int(config.model.init_steps):
    return
  parallel.say(f'Stage 1: {stage_dir} (model.init_from) has {"no checkpoint" if not steps else f"step {steps[-1]}"}: '
               f'training the source-only model there to step {config.model.init_steps} first.')
  try:
    train_and_evaluate(source_stage_config(config), stage_dir)  # takes (and releases) the lock of stage_dir
  except errors.Interrupted as e:
    raise errors.Interrupted(f'Stage 1 ({stage_dir}) stopped before its end: {e} It finishes first, then stage 2 '
                             f'({config.name}) starts.', e.signum) from e
  parallel.say(f'Stage 2: {config.name} from {stage_dir}.')


def _warm_start(method: base.Method, state: Any, spec: str) -> Any:
  """`state` with the segmentation variables of the run `spec` names (checked against this model)."""
  variables, info = checkpointing.load_segmentation_variables(spec)
  expected = method.eval_variables(state)
  checkpointing.check_same_structure(variables, dict(expected), f'model.init_from={spec!r} ({info["path"]})')
  parallel.say(f'Warm start from {info["workdir"]} ({info["kind"]} checkpoint, step {info["step"]}).')
  return method.warm_start(state, jax.tree.map(np.asarray, variables))


def _ignore_absent(batch: dict[str, Any], output_ids: tuple[int, ...] | None) -> dict[str, Any]:
  """The batch with the labels of classes the network has no output for set to ignore (models/classes.py)."""
  if output_ids is None or 'label' not in batch:
    return batch
  return {**batch, 'label': classes.ignore_absent(batch['label'], output_ids)}


def comparison_table(before: dict[str, Any], after: dict[str, Any], names: tuple[str, str]) -> str:
  """Per-class IoU of two evaluations side by side, with the difference (both on the same split)."""
  fmt = lambda v: '     n/a' if v is None else f'{v:8.2f}'
  lines = [f"{before['dataset']}/{before['split']}: {before['num_images']} images",
           f"{'class':<15}{names[0]:>14}{names[1]:>14}{'change':>9}"]
  for name, a in before['per_class_iou'].items():
    b = after['per_class_iou'].get(name)
    diff = '' if a is None or b is None else f'{b - a:+9.2f}'
    lines.append(f'{name:<15}{fmt(a):>14}{fmt(b):>14}{diff}')
  lines.append(f"{'mIoU':<15}{before['miou']:14.2f}{after['miou']:14.2f}{after['miou'] - before['miou']:+9.2f}")
  return '\n'.join(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
  """Trains `config.method` for `config.train.num_steps` steps (resuming from `workdir`), evaluates, returns eval.

  With `model.init_from` a fresh run starts from that run's segmentation variables, evaluates them first
  (`eval_init.json`) and prints both evaluations side by side at the end. The run holds `workdir`'s lock
  (WorkdirError if another live run has it); `train.stop_after_steps` returns None after its checkpoint; a
  SIGTERM/SIGINT saves a checkpoint and raises `errors.Interrupted` (exit code 128 + signal).
  """
  parallel.initialize_distributed()
  check_initialisation(config)
  with WorkdirLock(workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
  """`train_and_evaluate` while holding the workdir's lock: checks, data, resume, the loop, evaluation."""
  from rtda_jax.data import builders, pipeline
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(config.train.batch_size, mesh)
  parallel.check_batch_size(config.data.eval_batch_size, mesh, field='data.eval_batch_size')  # before training
  _ensure_source_stage(config, workdir)
  method = methods.get_method(config)
  builders.prepare(config.data, raw_splits=evaluate.raw_splits(config))  # raw_splits: the eval.protocol's
  train_data = {d: method.train_data(d) for d in method.domains}
  for data_config, _ in train_data.values():
    if data_config is not config.data:
      builders.prepare(data_config)

  seed = run_seed(config)
  root = jax.random.PRNGKey(seed)
  state = method.init(jax.random.fold_in(root, _INIT), base.train_shapes(config))
  shapes = base.train_shapes(config)
  iterators = {d: pipeline.train_loader(data_config, dataset, 'train', config.train.batch_size,
                                        seed=data_seed(seed, d), shape=shapes[d],
                                        rare_class_sampling=d == 'source')  # data.rcs: labelled source only
               for d, (data_config, dataset) in train_data.items()}

  t = config.train
  if t.get('resume_step') is not None:
    for moved in checkpointing.rewind(workdir, int(t.resume_step)):
      parallel.say(f'train.resume_step={t.resume_step}: a later checkpoint is set aside in {moved}.')
  checkpointer = checkpointing.Checkpointer(workdir, t.max_checkpoints)
  writer, completed = None, False
  try:
    start, best_miou, result, saved_interval = 0, -1.0, None, None
    if checkpointer.latest_step() is not None:
      state, meta = checkpointer.restore(state, iterators)
      start, best_miou = int(meta['step']), float(meta['best_miou'])
      saved_interval = meta.get('log_interval')
      parallel.say(f'Resumed from {workdir} at step {start}.')
    elif config.model.get('init_from'):
      state = _warm_start(method, state, config.model.init_from)
    record_config(config, workdir, start)  # the launch is valid: config.json and config_history.jsonl
    if jax.process_index() == 0:  # every network of the method: names, shapes, dtypes, sizes (clu)
      print(format_parameter_overview(parameter_overview(state)))
    state = parallel.replicate(state, mesh)

    rep = parallel.replicated(mesh)
    step_fn = jax.jit(method.train_step, donate_argnums=0, out_shardings=(rep, rep))
    writer = MetricWriter(workdir, resume_step=start)
    # The logged training scalars are means over the logging interval: each step's metrics are merged on the device
    # into a clu.metrics Collection (built from the method's metric names at the first step), read at a log step
    # and reset. A checkpoint carries the interval so far (meta 'log_interval'): a resumed run logs the same values.
    interval = fresh = accumulate = compute = None

    def save(step: int, best: bool = False) -> None:
      meta = {'step': step, 'best_miou': best_miou}
      if interval is not None:
        meta['log_interval'] = interval_to_json(interval)
      checkpointer.save(step, state, iterators, meta, best=best)

    def run_eval(step: int) -> dict[str, Any]:
      nonlocal best_miou
      res = evaluate.evaluate(method, method.eval_variables(state), config, mesh, step=step, workdir=workdir)
      writer.scalars(step, evaluate.scalars(res))  # eval/miou, pixel accuracy, mean Dice, the class set's means
      if res['miou'] > best_miou:
        best_miou = res['miou']
        save(step, best=True)
      return res

    evaluates = method.evaluates_segmentation  # False for a translator: no segmentation net of its own to score
    output_ids = classes.output_ids(config.model.get('output_classes'))  # a 16-output net ignores the other labels
    init_eval = _initial_evaluation(method, state, config, mesh, workdir, start) if evaluates else None
    pending = None  # the previous step's metrics: checked one step late so the device is never idle
    tick, tick_step, stopped_at = time.perf_counter(), start, None
    with checkpointing.StopRequest() as stop, tqdm(total=t.num_steps, initial=start, desc=config.name,
                                                   disable=jax.process_index() != 0, dynamic_ncols=True) as bar:
      last_step = t.num_steps if not t.stop_after_steps else min(t.num_steps, start + t.stop_after_steps)
      for step in range(start + 1, last_step + 1):
        batch = parallel.shard_batch({d: _ignore_absent(next(it), output_ids) for d, it in iterators.items()}, mesh)
        state, metrics = step_fn(state, batch)
        if interval is None:  # the first step of this launch: the method's metric names are known now
          cls = interval_metrics(list(metrics))
          fresh = parallel.replicate(cls.empty(), mesh)
          restored = interval_from_json(cls, saved_interval)
          interval = fresh if restored is None else parallel.replicate(restored, mesh)
          accumulate = jax.jit(lambda acc, m, cls=cls: acc.merge(cls.single_from_model_output(**m)),
                               out_shardings=rep)
          compute = jax.jit(lambda acc: acc.compute(), out_shardings=rep)
        interval = accumulate(interval, metrics)  # on the device, no host sync
        if pending is not None:
          _check_finite(_watched(pending[1]), pending[0], checkpointer)
        pending = (step, metrics)
        bar.update(1)
        if step % t.log_every_steps == 0 or step == t.num_steps:
          values = {k: float(v) for k, v in jax.device_get(compute(interval)).items()}  # means since the last log
          interval = fresh
          _check_finite(values, step, checkpointer)
          now = time.perf_counter()
          values['images_per_sec'] = (step - tick_step) * t.batch_size * len(method.domains) / (now - tick)
          tick, tick_step = now, step
          writer.scalars(step, values)
          name, value = next(iter(_watched(values).items()))
          bar.set_postfix({name: f'{value:.4f}', 'img_s': f"{values['images_per_sec']:.1f}"})
        if step % t.checkpoint_every_steps == 0 or step == last_step or stop:
          _check_finite(_watched(metrics), step, checkpointer)
          save(step)  # NonFiniteError instead when the state is not finite: nothing non-finite is saved
        if evaluates and (step % config.eval.every_steps == 0 or step == t.num_steps):
          result = run_eval(step)
          if jax.process_index() == 0:  # tqdm.write prints even where the bar is disabled
            bar.write(evaluate.format_table(result))
        if stop:
          stopped_at = step
          break
    if evaluates and stopped_at is None and result is None and last_step == t.num_steps:  # resumed, finished: again
      result = run_eval(t.num_steps)
    completed = True
  finally:
    if writer is not None:
      writer.close()
    try:
      checkpointer.close()
    except Exception as e:  # pylint: disable=broad-except
      if completed:
        raise
      logging.info('Closing the checkpointer after an error failed too: %s', e)  # the first error is the one
  if stopped_at is not None and stopped_at < last_step:
    raise errors.Interrupted(
        f'Stopped by {signal.Signals(stop.signum).name} at step {stopped_at}; the checkpoint is saved in '
        f'{workdir}/checkpoints/last: run the same command again to resume.', stop.signum)
  if init_eval is not None and result is not None and jax.process_index() == 0:
    print(f'Target mIoU before and after {config.name} (warm start from {config.model.init_from}):')
    print(comparison_table(init_eval, result, ('start', f'step {result["step"]}')))
  return result
