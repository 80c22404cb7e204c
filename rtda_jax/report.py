"""Plots of runs: `python -m rtda_jax.report runs/a runs/b ... --out report/` (matplotlib, Agg backend, PNG).

Reads only what a run leaves in its workdir, never its checkpoints:
  miou.png            target mIoU against step, every run (metrics.jsonl `eval/miou`; the warm-start model's
                      eval_init.json at step 0; eval.json)
  losses.png          one panel per loss (metrics.jsonl `loss*` but the discriminator's), every run
  per_class_iou.png   per-class IoU bars of every run side by side (eval.json `per_class_iou`)
  confusion_<run>.png the row-normalised confusion matrix of each run whose eval.json has `confusion` (rows: ground
                      truth, columns: prediction; evaluations since that field exists write it)
  discriminator.png   the discriminator's losses (metrics.jsonl `loss_disc*` / `disc_*`) of the adversarial runs
A run without a file a plot needs is left out of that plot and named in what is printed (and returned).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Sequence

import numpy as np

from rtda_jax import labels as labels_lib

EVAL_KEY = 'eval/miou'
DISC_PREFIXES = ('loss_disc', 'disc_')
DPI = 100
# The discriminator loss of an output 1/2 on both domains (losses.adversarial_loss): BCE ln 2, least squares 1/4.
CHANCE_LOSS = {'bce': math.log(2.0), 'ls': 0.25}


def is_disc_key(key: str) -> bool:
  return key.startswith(DISC_PREFIXES)


def is_loss_key(key: str) -> bool:
  return key.startswith('loss') and not is_disc_key(key)


def run_names(runs: Sequence[str]) -> list[str]:
  """Short unique labels: each run's path relative to the runs' common folder (its basename when alone)."""
  paths = [os.path.normpath(r) for r in runs]
  if len(paths) == 1:
    return [os.path.basename(paths[0]) or paths[0]]
  common = os.path.commonpath([os.path.abspath(p) for p in paths])
  names = [os.path.relpath(os.path.abspath(p), common) for p in paths]
  return [n if n != '.' else os.path.basename(p) for n, p in zip(names, paths)]


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl; a line that is not JSON (a run still writing) is left out."""
  records = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of `key`, the last record of each step winning, sorted by step; non-finite values dropped."""
  by_step = {}
  for r in records:
    value = r.get(key)
    if key in r and 'step' in r and isinstance(value, (int, float)) and math.isfinite(value):
      by_step[int(r['step'])] = float(value)
  steps = np.array(sorted(by_step), dtype=np.int64)
  return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


class Run:
  """What one workdir holds for the plots; `missing` lists (file, what it leaves out)."""

  def __init__(self, workdir: str, name: str):
    self.workdir, self.name = workdir, name
    self.missing: list[tuple[str, str]] = []
    self.metrics: list[dict[str, Any]] | None = None
    self.eval: dict[str, Any] | None = None
    self.eval_init: dict[str, Any] | None = None
    self.init_from: str | None = None  # the workdir of the run this one warm-started from (config.json)
    self.offset = 0  # added to every step: the init run's last step when that run is plotted too
    if not os.path.isdir(workdir):
      self.missing.append(('', 'not a folder: left out of every plot'))
      return
    path = os.path.join(workdir, 'metrics.jsonl')
    if os.path.exists(path):
      self.metrics = read_metrics(path)
    else:
      self.missing.append(('metrics.jsonl', 'left out of the mIoU-over-steps, loss and discriminator plots'))
    self.eval = self._json('eval.json', 'left out of the per-class IoU and confusion plots')
    if os.path.exists(os.path.join(workdir, 'eval_init.json')):
      self.eval_init = self._json('eval_init.json', '')
    config = self._json('config.json', '') if os.path.exists(os.path.join(workdir, 'config.json')) else None
    self.gan = ((config or {}).get('adv') or {}).get('gan')  # the adversarial loss ('bce' | 'ls'), if any
    spec = ((config or {}).get('model') or {}).get('init_from')
    if spec:
      from rtda_jax import checkpointing  # pylint: disable=import-outside-toplevel
      self.init_from = checkpointing.parse_init_from(spec)[0]

  def last_step(self) -> int:
    steps = [int(r['step']) for r in self.metrics or () if 'step' in r]
    if self.eval and 'step' in self.eval:
      steps.append(int(self.eval['step']))
    return max(steps, default=0)

  def _json(self, name: str, why: str) -> dict[str, Any] | None:
    path = os.path.join(self.workdir, name)
    if not os.path.exists(path):
      self.missing.append((name, why))
      return None
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      self.missing.append((name, f'unreadable ({e}); {why}'))
      return None

  def keys(self) -> list[str]:
    return sorted({k for r in self.metrics or () for k in r})

  def miou_curve(self) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mIoU): eval_init.json (step 0), every `eval/miou` of metrics.jsonl, and eval.json."""
    points = {}
    if self.eval_init and self.eval_init.get('miou') is not None:
      points[int(self.eval_init.get('step', 0))] = float(self.eval_init['miou'])
    if self.metrics:
      for s, v in zip(*series(self.metrics, EVAL_KEY)):
        points[int(s)] = float(v)
    if self.eval and self.eval.get('miou') is not None and 'step' in self.eval:
      points[int(self.eval['step'])] = float(self.eval['miou'])
    steps = np.array(sorted(points), dtype=np.int64)
    return steps + self.offset, np.array([points[s] for s in steps], dtype=np.float64)

  def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    steps, values = series(self.metrics or [], key)
    return steps + self.offset, values


def continue_steps(runs: list[Run]) -> None:
  """A warm-started run whose init run is plotted too continues that run's steps (its step 0 = that run's last)."""
  by_path = {os.path.realpath(r.workdir): r for r in runs}
  for run in runs:
    seen, parent = {os.path.realpath(run.workdir)}, run
    offset = 0
    while parent.init_from and os.path.realpath(parent.init_from) in by_path:
      key = os.path.realpath(parent.init_from)
      if key in seen:
        break
      seen.add(key)
      parent = by_path[key]
      offset += parent.last_step()
    run.offset = offset


# ---- figures --------------------------------------------------------------------------------------------------------

def _figure(width: float, height: float):
  """A matplotlib Figure drawn by the Agg backend (no pyplot state, no display)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(width, height), dpi=DPI)
  FigureCanvasAgg(fig)
  return fig


def _colors(n: int) -> list[Any]:
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
  cmap = colormaps['tab10' if n <= 10 else 'tab20']
  return [cmap(i % cmap.N) for i in range(n)]


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  return path


def plot_miou(runs: list[Run], path: str) -> str | None:
  """mIoU against step, one line (with markers) per run that has any evaluation."""
  curves = [(r, *r.miou_curve()) for r in runs]
  curves = [(r, s, v) for r, s, v in curves if len(s)]
  if not curves:
    return None
  fig = _figure(7.5, 4.2)
  ax = fig.add_subplot()
  for (run, steps, values), color in zip(curves, _colors(len(curves))):
    ax.plot(steps, values, marker='o', markersize=3, color=color, label=f'{run.name} ({values[-1]:.1f})')
  ax.set_xlabel('step')
  ax.set_ylabel('target mIoU (%)')
  ax.set_title('target mIoU against step' + (' (a warm start continues the run it starts from)'
                                             if any(r.offset for r, _, _ in curves) else ''), fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc='best')
  return _save(fig, path)


def _line_panels(runs: list[Run], keys: list[str], path: str, title: str,
                 chance: dict[str, float] | None = None) -> str | None:
  if not keys:
    return None
  cols = min(3, len(keys))
  rows = -(-len(keys) // cols)
  fig = _figure(4.2 * cols, 2.9 * rows)
  colors = dict(zip([r.name for r in runs], _colors(len(runs))))
  for i, key in enumerate(keys):
    ax = fig.add_subplot(rows, cols, i + 1)
    for run in runs:
      steps, values = run.series(key)
      if len(steps):
        ax.plot(steps, values, linewidth=1.0, color=colors[run.name], label=run.name)
    if chance and key in chance:
      ax.axhline(chance[key], color='grey', linestyle='--', linewidth=0.8, label='chance')
    ax.set_title(key, fontsize=9)
    ax.set_xlabel('step', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if i == 0:
      ax.legend(fontsize=6, loc='best')
  fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def plot_losses(runs: list[Run], path: str) -> str | None:
  """One panel per loss name (the union over runs; `loss` first), one line per run."""
  keys = sorted({k for r in runs for k in r.keys() if is_loss_key(k)}, key=lambda k: (k != 'loss', k))
  return _line_panels(runs, keys, path, 'training losses against step')


def plot_discriminator(runs: list[Run], path: str) -> str | None:
  """The discriminator's logged values against step, for the runs that log any (adversarial runs)."""
  adversarial = [r for r in runs if any(is_disc_key(k) for k in r.keys())]
  keys = sorted({k for r in adversarial for k in r.keys() if is_disc_key(k)})
  gans = {r.gan for r in adversarial}
  chance = {}  # a discriminator that cannot tell the domains apart: output 1/2 on both
  for key in keys:
    if key.startswith('disc_accuracy'):
      chance[key] = 0.5
    elif key.startswith('loss_disc') and len(gans) == 1 and next(iter(gans)) in CHANCE_LOSS:
      chance[key] = CHANCE_LOSS[next(iter(gans))]
  return _line_panels(adversarial, keys, path, 'discriminator against step (dashed: chance)', chance)


def plot_per_class_iou(runs: list[Run], path: str) -> str | None:
  """Grouped bars: per class, one bar per run (eval.json `per_class_iou`; a class without IoU has no bar)."""
  evals = [r for r in runs if r.eval and r.eval.get('per_class_iou')]
  if not evals:
    return None
  classes = list(evals[0].eval['per_class_iou'])
  for r in evals[1:]:
    classes += [c for c in r.eval['per_class_iou'] if c not in classes]
  fig = _figure(min(14.0, max(9.0, 0.35 * len(classes) * (1.0 + 0.25 * len(evals)))), 4.6)
  ax = fig.add_subplot()
  width = 0.8 / len(evals)
  x = np.arange(len(classes))
  for i, (run, color) in enumerate(zip(evals, _colors(len(evals)))):
    iou = run.eval['per_class_iou']
    values = [np.nan if iou.get(c) is None else iou[c] for c in classes]
    miou = run.eval.get('miou')
    ax.bar(x - 0.4 + (i + 0.5) * width, values, width, color=color,
           label=f'{run.name} (mIoU {miou:.1f})' if miou is not None else run.name)
  ax.set_xticks(x)
  ax.set_xticklabels(classes, rotation=45, ha='right', fontsize=8)
  ax.set_ylabel('IoU (%)')
  ax.set_ylim(0, 100)
  ax.set_title('per-class IoU on the target validation split')
  ax.grid(axis='y', alpha=0.3)
  ax.legend(fontsize=7, ncol=min(3, len(evals)), loc='upper right')
  return _save(fig, path)


def row_normalised(cm: np.ndarray) -> np.ndarray:
  """[C, C] counts (rows = ground truth) -> each row divided by its sum; rows without ground truth are NaN."""
  cm = np.asarray(cm, np.float64)
  sums = cm.sum(axis=1, keepdims=True)
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(sums > 0, cm / sums, np.nan)


def plot_confusion(run: Run, path: str, class_names: Sequence[str] = labels_lib.CLASS_NAMES) -> str | None:
  """Row-normalised confusion heat map of `run` (eval.json `confusion`), cells >= 1% written in percent."""
  cm = (run.eval or {}).get('confusion')
  if cm is None:
    return None
  cm = np.asarray(cm, np.float64)
  names = list(class_names) if len(class_names) == cm.shape[0] else [str(i) for i in range(cm.shape[0])]
  norm = row_normalised(cm)
  fig = _figure(7.6, 6.8)
  ax = fig.add_subplot()
  image = ax.imshow(norm, cmap='Blues', vmin=0.0, vmax=1.0)
  for i in range(norm.shape[0]):
    for j in range(norm.shape[1]):
      if np.isfinite(norm[i, j]) and norm[i, j] >= 0.01:
        ax.text(j, i, f'{100 * norm[i, j]:.0f}', ha='center', va='center', fontsize=5.5,
                color='white' if norm[i, j] > 0.5 else 'black')
  ticks = np.arange(len(names))
  ax.set_xticks(ticks)
  ax.set_xticklabels(names, rotation=90, fontsize=7)
  ax.set_yticks(ticks)
  ax.set_yticklabels(names, fontsize=7)
  ax.set_xlabel('prediction')
  ax.set_ylabel('ground truth')
  miou = run.eval.get('miou')
  ax.set_title(f'{run.name}: confusion (% of each ground-truth row)'
               + (f', mIoU {miou:.1f}' if miou is not None else ''), fontsize=9)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  return _save(fig, path)


def _file_name(name: str) -> str:
  return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)


def make_report(workdirs: Sequence[str], out: str, names: Sequence[str] | None = None) -> dict[str, Any]:
  """Writes every plot the runs' files allow into `out`; returns {'written': [paths], 'missing': [(run, file,
  what it leaves out)], 'notes': [str]} and prints the missing files and notes by name."""
  names = list(names) if names else run_names(workdirs)
  if len(names) != len(workdirs):
    raise ValueError(f'{len(names)} names for {len(workdirs)} runs.')
  runs = [Run(w, n) for w, n in zip(workdirs, names)]
  continue_steps(runs)
  os.makedirs(out, exist_ok=True)
  written, notes = [], []
  for what, fn in (('miou.png', plot_miou), ('losses.png', plot_losses), ('per_class_iou.png', plot_per_class_iou),
                   ('discriminator.png', plot_discriminator)):
    path = fn(runs, os.path.join(out, what))
    if path:
      written.append(path)
    elif what == 'discriminator.png':
      notes.append('discriminator.png not written: no run logs loss_disc* / disc_* (no adversarial run).')
    else:
      notes.append(f'{what} not written: no run has the file it needs.')
  for run in runs:
    path = plot_confusion(run, os.path.join(out, f'confusion_{_file_name(run.name)}.png'))
    if path:
      written.append(path)
    elif run.eval is not None:
      notes.append(f'{run.workdir}: eval.json has no confusion matrix (written before evaluations saved it); '
                   f're-evaluate it (--mode=evaluate) for confusion_{_file_name(run.name)}.png.')
  missing = [(run.workdir, file, why) for run in runs for file, why in run.missing]
  for workdir, file, why in missing:
    print(f'{os.path.join(workdir, file)}: missing; {why}' if file else f'{workdir}: {why}')
  for note in notes:
    print(note)
  for path in written:
    print(f'wrote {path}')
  return {'written': written, 'missing': missing, 'notes': notes}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m rtda_jax.report', description=__doc__.split('\n')[0])
  parser.add_argument('runs', nargs='+', help='run workdirs (runs/<name>)')
  parser.add_argument('--out', default='report', help='folder the PNGs go to (default: report/)')
  parser.add_argument('--names', default='', help='comma-separated labels of the runs (default: their paths)')
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.names.split(',')] if args.names else None
  result = make_report(args.runs, args.out, names)
  return 0 if result['written'] else 1


if __name__ == '__main__':
  sys.exit(main())
