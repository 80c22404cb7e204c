"""Orbax checkpoints of everything a run needs to continue bit for bit.

One checkpoint = the method state (every network's params, BatchNorm statistics and optimiser state, the EMA teacher
where there is one, the PRNG key, the step) + the grain data iterators' positions + a little metadata (JSON). Orbax writes
to a temporary folder and renames it, so a checkpoint is either complete or absent. `last/` holds the most recent
ones (on a schedule and on SIGTERM/SIGINT), `best/` the one with the best validation mIoU.
"""

from __future__ import annotations

import os
import signal
import threading
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """The `last` and `best` checkpoint managers of a workdir."""

  def __init__(self, workdir: str, max_to_keep: int = 2):
    root = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    opts = lambda keep: ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                     enable_async_checkpointing=False)
    self.last = ocp.CheckpointManager(os.path.join(root, 'last'), options=opts(max_to_keep))
    self.best = ocp.CheckpointManager(os.path.join(root, 'best'), options=opts(1))

  def latest_step(self) -> int | None:
    return self.last.latest_step()

  @staticmethod
  def has_checkpoint(workdir: str) -> bool:
    """Whether `workdir` holds a `last` checkpoint (without creating any folder)."""
    return bool(checkpoint_steps(os.path.join(workdir, 'checkpoints', 'last')))

  def save(self, step: int, state: Any, iterators: dict[str, Any], meta: dict[str, Any],
           best: bool = False) -> None:
    """Saves the state, each data iterator's position (one file per process) and `meta` as checkpoint `step`."""
    from rtda_jax.data import pipeline
    manager = self.best if best else self.last
    if step in manager.all_steps():
      return
    items = {f'data_{d}': pipeline.orbax_save_args(it) for d, it in iterators.items()}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta), **items)
    manager.save(step, args=args, force=True)
    manager.wait_until_finished()

  def restore(self, target_state: Any, iterators: dict[str, Any] | None = None, step: int | None = None,
              best: bool = False) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of `step` (default: the latest) from `last` (or `best`); data iterators are moved in place to
    their saved positions. `target_state` gives the tree structure, shapes and dtypes."""
    from rtda_jax.data import pipeline
    manager = self.best if best else self.last
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {manager.directory}.')
    if step not in manager.all_steps():
      raise FileNotFoundError(f'No checkpoint for step {step} in {manager.directory}; '
                              f'available: {sorted(manager.all_steps())}.')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    items = {f'data_{d}': pipeline.orbax_restore_args(it) for d, it in (iterators or {}).items()}
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore(), **items)
    restored = manager.restore(step, args=args)
    return restored.state, restored.meta

  def close(self) -> None:
    self.last.close()
    self.best.close()


class StopRequest:
  """Turns SIGTERM / SIGINT into a flag the training loop polls, so it can checkpoint and exit cleanly.

  A second signal while the first is being handled falls through to the default behaviour.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signum is not None:  # second signal: restore defaults and re-raise
      self.__exit__()
      signal.raise_signal(signum)
      return
    self.signum = signum

  def __bool__(self) -> bool:
    return self.signum is not None

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()


# ---- warm start -----------------------------------------------------------------------------------------------------


def checkpoint_steps(root: str) -> list[int]:
  """The steps of the checkpoints in a manager folder (`checkpoints/last` or `best`), ascending; [] if none."""
  return sorted(int(s) for s in os.listdir(root) if s.isdigit()) if os.path.isdir(root) else []


def parse_init_from(spec: str) -> tuple[str, str, int | None]:
  """'WORKDIR[:best|last|STEP]' -> (workdir, 'best' | 'last', step or None for the newest)."""
  workdir, kind, step = spec, 'last', None
  head, sep, tail = spec.rpartition(':')
  if sep and head and (tail in ('best', 'last') or tail.isdigit()):
    workdir = head
    if tail.isdigit():
      step = int(tail)
    else:
      kind = tail
  return workdir, kind, step


def load_segmentation_variables(spec: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """The segmentation network's {'params', 'batch_stats'} of the run named by `spec` ('WORKDIR[:best|last|STEP]'),
  read without knowing that run's method (any method's state keeps the segmentation net in `seg`), and
  {'workdir', 'kind', 'step'}. FileNotFoundError / ValueError naming the checkpoint when there is none or it has no
  segmentation network."""
  workdir, kind, step = parse_init_from(spec)
  root = os.path.abspath(os.path.join(workdir, 'checkpoints', kind))
  steps = checkpoint_steps(root)
  if not steps:
    raise FileNotFoundError(f'model.init_from={spec!r}: no checkpoint in {root}. Train that run first, or name '
                            'another run (WORKDIR[:best|last|STEP]).')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f'model.init_from={spec!r}: no checkpoint of step {step} in {root}; it has {steps}.')
  path = os.path.join(root, str(step), 'state')
  with ocp.PyTreeCheckpointer() as ckpt, warnings.catch_warnings():
    # Restored as host arrays (the trainer places them on its own mesh): orbax's "sharding info not provided"
    # warning does not apply.
    warnings.filterwarnings('ignore', message='Sharding info not provided')
    tree = ckpt.restore(path)
  seg = tree.get('seg') if isinstance(tree, dict) else None
  if not isinstance(seg, dict) or 'params' not in seg:
    raise ValueError(f'model.init_from={spec!r}: the checkpoint {path} holds no segmentation network (`seg`).')
  variables = {'params': seg['params']}
  if seg.get('batch_stats') is not None:
    variables['batch_stats'] = seg['batch_stats']
  return variables, {'workdir': workdir, 'kind': kind, 'step': step, 'path': path}


def check_same_structure(loaded: Any, expected: Any, what: str) -> None:
  """ValueError naming `what` and the differing paths/shapes unless the two trees have one structure and shapes."""
  flat = lambda t: {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}
  a, b = flat(loaded), flat(expected)
  missing, unexpected = sorted(set(b) - set(a)), sorted(set(a) - set(b))
  shapes = sorted(k for k in set(a) & set(b) if a[k] != b[k])
  if missing or unexpected or shapes:
    parts = []
    if missing:
      parts.append(f'{len(missing)} missing (e.g. {missing[:3]})')
    if unexpected:
      parts.append(f'{len(unexpected)} unexpected (e.g. {unexpected[:3]})')
    if shapes:
      parts.append('shapes differ: ' + ', '.join(f'{k} {a[k]} vs {b[k]}' for k in shapes[:3]))
    raise ValueError(f'{what} does not match this model: {"; ".join(parts)}. Check model.name, model.num_classes, '
                     'model.multi_level against that run\'s config.json.')
