"""Orbax checkpoints of everything a run needs to continue bit for bit.

One checkpoint = the method state (every network's params, BatchNorm statistics and optimiser state, the EMA teacher
where there is one, the PRNG key, the step) + the grain data iterators' positions + a little metadata (JSON). Orbax
writes to a temporary folder and renames it, so a checkpoint is either complete or absent. `last/` holds the most recent
ones (on a schedule and on SIGTERM/SIGINT), `best/` the one with the best validation mIoU.

A state with a NaN/Inf is never saved (NonFiniteError instead); a damaged checkpoint or a full disk is one
WorkdirError naming the step and folder and what to do (`train.resume_step` resumes from an older kept step).
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rtda_jax import errors

RESUME_HINT = ('--config.train.resume_step=N (training; later checkpoints are set aside) or '
               '--config.eval.checkpoint=N (--mode=evaluate)')


class NonFiniteError(errors.UserError, FloatingPointError):
  """Training produced NaN/Inf (a loss, or the state about to be saved); the message names the newest checkpoint on
  disk, which is finite: no non-finite state is ever saved."""


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def all_finite(tree: Any) -> bool:
  """Whether every floating leaf of `tree` is finite: one jitted reduction on the device(s), one bool fetched."""
  return bool(_all_finite(tree))


def tree_nbytes(tree: Any) -> int:
  """The bytes of a pytree's arrays (global size of sharded/replicated ones, counted once)."""
  return sum(int(getattr(x, 'nbytes', 0)) for x in jax.tree.leaves(tree))


def format_bytes(n: float) -> str:
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if abs(n) < 1024 or unit == 'GiB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
    n /= 1024
  raise AssertionError


def _chain(e: BaseException) -> list[BaseException]:
  """`e` and its causes / contexts (and the members of exception groups), each once."""
  seen, todo, out = set(), [e], []
  while todo:
    x = todo.pop()
    if x is None or id(x) in seen:
      continue
    seen.add(id(x))
    out.append(x)
    todo += [x.__cause__, x.__context__, *getattr(x, 'exceptions', ())]
  return out


def is_disk_full(e: BaseException) -> bool:
  """Whether a save failed for lack of space: OSError ENOSPC / EDQUOT, or tensorstore's RESOURCE_EXHAUSTED (unless
  it is about memory)."""
  for x in _chain(e):
    if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    text = str(x)
    if 'No space left on device' in text or 'Disk quota exceeded' in text:
      return True
    if 'RESOURCE_EXHAUSTED' in text and 'memory' not in text.lower() and 'allocat' not in text.lower():
      return True  # tensorstore's code for a full disk (not an out-of-memory, which shares it)
  return False


def _reason(e: BaseException) -> str:
  """The innermost cause's first line, shortened: what orbax/tensorstore actually failed on."""
  x = e
  while x.__cause__ is not None:
    x = x.__cause__
  line = (str(x).strip().splitlines() or [type(x).__name__])[0]
  return f'{type(x).__name__}: {line[:300]}'


class Checkpointer:
  """The `last` and `best` checkpoint managers of a workdir."""

  def __init__(self, workdir: str, max_to_keep: int = 2):
    self.workdir = workdir
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

  def newest_on_disk(self) -> str:
    """Which `last` checkpoint is the newest on disk (read from the folder, not orbax's cache), for messages."""
    steps = checkpoint_steps(str(self.last.directory))
    return (f'the last good checkpoint (step {steps[-1]}) is kept in {self.last.directory}' if steps else
            f'no checkpoint had been written yet in {self.last.directory}')

  def save(self, step: int, state: Any, iterators: dict[str, Any], meta: dict[str, Any],
           best: bool = False) -> None:
    """Saves the state, each data iterator's position (one file per process) and `meta` as checkpoint `step`.

    NonFiniteError (nothing written) if a floating leaf of `state` is NaN/Inf; WorkdirError naming the free and the
    needed space if the disk is full (the previous checkpoints stay)."""
    from rtda_jax.data import pipeline
    manager = self.best if best else self.last
    if step in manager.all_steps():
      return
    if not all_finite(state):
      raise NonFiniteError(
          f'The training state at step {step} holds non-finite values (NaN/Inf) and was not saved; '
          f'{self.newest_on_disk()} (no non-finite state is ever saved). Lower train.learning_rate or check the '
          f'data, then resume (from another kept step: {RESUME_HINT}).')
    items = {f'data_{d}': pipeline.orbax_save_args(it) for d, it in iterators.items()}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta), **items)
    try:
      manager.save(step, args=args, force=True)
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if not is_disk_full(e):
        raise
      self._remove_partial(manager, step)
      directory = str(manager.directory)
      free = shutil.disk_usage(directory).free
      raise errors.WorkdirError(
          f'The disk is full: saving checkpoint step {step} of {self.workdir} failed with '
          f'{format_bytes(free)} free in {directory}, about {format_bytes(tree_nbytes(state))} needed; '
          f'{self.newest_on_disk()}. Free some space (or move the workdir), then run the same command again to '
          'resume.') from e

  @staticmethod
  def _remove_partial(manager: Any, step: int) -> None:
    """Deletes the temporary folder of a failed save (orbax's `<step>.orbax-checkpoint-tmp-*`) to give its space
    back. Process 0 only: another process deleting it could pull it from under orbax's writer on process 0."""
    if jax.process_index() != 0:
      return
    for path in glob.glob(os.path.join(str(manager.directory), f'{step}.orbax-checkpoint-tmp*')):
      shutil.rmtree(path, ignore_errors=True)

  def restore(self, target_state: Any, iterators: dict[str, Any] | None = None, step: int | None = None,
              best: bool = False) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of `step` (default: the latest) from `last` (or `best`); data iterators are moved in place to
    their saved positions. `target_state` gives the tree structure, shapes and dtypes. WorkdirError naming the
    step, the folder and the readable steps when the checkpoint is damaged."""
    manager = self.best if best else self.last
    step = manager.latest_step() if step is None else step
    if step is None:
      raise errors.MissingFileError(f'No checkpoint in {manager.directory}.')
    if step not in manager.all_steps():
      raise errors.MissingFileError(f'No checkpoint for step {step} in {manager.directory}; '
                                    f'available: {sorted(manager.all_steps())}.')
    try:
      restored = self._restore(manager, step, target_state, iterators)
    except Exception as e:  # pylint: disable=broad-except
      reason = _missing_file(manager, step, iterators) or _reason(e)
      readable = [s for s in sorted(manager.all_steps(), reverse=True)
                  if s != step and self._readable(manager, s, target_state, iterators)]
      how = (f'Resume from one of them with {RESUME_HINT}' if readable else
             'No checkpoint there restores into this config\'s state: if the config changed (model, method), '
             'launch with the run\'s own config (config.json) or another --workdir; else move that folder away to '
             'start afresh')
      raise errors.WorkdirError(
          f'Checkpoint step {step} in {manager.directory} is unreadable ({reason}). Readable steps there: '
          f'{sorted(readable) or "none"}. {how}.') from e
    return restored.state, restored.meta

  @staticmethod
  def _restore(manager: Any, step: int, target_state: Any, iterators: dict[str, Any] | None) -> Any:
    from rtda_jax.data import pipeline
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    items = {f'data_{d}': pipeline.orbax_restore_args(it) for d, it in (iterators or {}).items()}
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore(), **items)
    return manager.restore(step, args=args)

  def _readable(self, manager: Any, step: int, target_state: Any, iterators: dict[str, Any] | None) -> bool:
    """Whether checkpoint `step` restores (a trial restore; only on the error path, the iterators are moved)."""
    if _missing_file(manager, step, iterators):
      return False
    try:
      self._restore(manager, step, target_state, iterators)
      return True
    except Exception:  # pylint: disable=broad-except
      return False

  def close(self) -> None:
    self.last.close()
    self.best.close()


def _missing_file(manager: Any, step: int, iterators: dict[str, Any] | None) -> str | None:
  """'FILE is missing' for the first file a complete checkpoint has and this one lacks, else None."""
  folder = os.path.join(str(manager.directory), str(step))
  needed = [os.path.join('state', '_METADATA'), os.path.join('meta', 'metadata'),
            *(f'data_{d}' for d in (iterators or {}))]
  for name in needed:
    if not os.path.exists(os.path.join(folder, name)):
      return f'{os.path.join(folder, name)} is missing'
  return None


def rewind(workdir: str, step: int) -> list[str]:
  """Makes `last` checkpoint `step` the newest of `workdir` (`train.resume_step`): the `last` and `best`
  checkpoints of later steps are moved to `checkpoints/set_aside/` (not deleted). Returns the moved folders.
  MissingFileError naming the kept steps when there is no checkpoint of `step`."""
  root = os.path.join(workdir, 'checkpoints')
  steps = checkpoint_steps(os.path.join(root, 'last'))
  if step not in steps:
    raise errors.MissingFileError(
        f'train.resume_step={step}: no checkpoint of that step in {os.path.join(root, "last")}; the kept steps are '
        f'{steps or "none"}.')
  moved = []
  if jax.process_index() == 0:
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for kind in ('last', 'best'):
      for s in checkpoint_steps(os.path.join(root, kind)):
        if s > step:
          target = os.path.join(root, 'set_aside', f'{kind}_{s}_{stamp}')
          os.makedirs(os.path.dirname(target), exist_ok=True)
          os.rename(os.path.join(root, kind, str(s)), target)
          moved.append(target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('rtda_jax.checkpointing.rewind')
  return moved


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


def read_host_tree(path: str) -> Any:
  """The pytree saved at `path` (an orbax PyTree checkpoint) as host NumPy arrays, whatever devices saved it: a run
  saved by several processes or GPUs names devices this process may not have (restored without a target, orbax
  would rebuild those shardings and fail)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(path))  # the item's own (no step metadata to find)
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), getattr(metadata, 'tree', metadata))
  with ocp.PyTreeCheckpointer() as ckpt:
    return ckpt.restore(path, restore_args=as_numpy)


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
  tree = read_host_tree(path)
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
