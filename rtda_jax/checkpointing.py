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
