"""What a training run keeps about its workdir besides checkpoints: the lock that gives it to one run at a time, and
the configs it was launched with (`config.json`, the latest, and `config_history.jsonl`, one line per launch).

The lock is `<workdir>/.lock`, created atomically (O_CREAT | O_EXCL) by process 0 of a run and removed when the run
ends, also on an error. It holds JSON {pid, host, started, boot_id, pid_start}: a lock of this host whose process is
gone (or whose pid now belongs to another process, or that was taken before a reboot) is stale and recovered with a
warning; a lock of another host is refused (its process cannot be checked from here).
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from rtda_jax import errors, files

LOCK_FILE = '.lock'
HISTORY_FILE = 'config_history.jsonl'


def _read_text(path: str) -> str | None:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return None


def _boot_id() -> str | None:
  """This kernel's boot id (Linux): a lock written before a reboot is stale whatever its pid."""
  return _read_text('/proc/sys/kernel/random/boot_id')


def _pid_start(pid: int) -> int | None:
  """The start time of process `pid` (clock ticks since boot, Linux), which tells a reused pid from the holder."""
  stat = _read_text(f'/proc/{pid}/stat')
  if not stat:
    return None
  try:
    return int(stat.rpartition(')')[2].split()[19])  # field 22; fields after the command name start at field 3
  except (IndexError, ValueError):
    return None


def _alive(holder: dict[str, Any]) -> bool:
  """Whether the process that wrote a lock of this host still runs."""
  if holder.get('boot_id') and _boot_id() and holder['boot_id'] != _boot_id():
    return False
  pid = int(holder['pid'])
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    pass
  start = _pid_start(pid)
  return not (holder.get('pid_start') is not None and start is not None and start != holder['pid_start'])


def _describe(holder: dict[str, Any]) -> str:
  return f"pid {holder.get('pid')} on host {holder.get('host')!r}, started {holder.get('started', '?')}"


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds `<workdir>/.lock` for the block (process 0 only; other processes of a
  multi-process run hold nothing). WorkdirError naming the holder when another live run has it."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self.held = False

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def _create(self) -> bool:
    """Creates the lock file atomically; False if it exists."""
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    info = {'pid': os.getpid(), 'host': socket.gethostname(),
            'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
            'boot_id': _boot_id(), 'pid_start': _pid_start(os.getpid())}
    with os.fdopen(fd, 'w') as f:
      json.dump(info, f)
    self.held = True
    return True

  def _holder(self) -> dict[str, Any] | None:
    """The lock's JSON; None if it vanished meanwhile. A file still being written is read again for a second."""
    for _ in range(10):
      text = _read_text(self.path)
      if text is None:
        return None
      try:
        holder = json.loads(text)
        if isinstance(holder, dict) and 'pid' in holder:
          return holder
      except json.JSONDecodeError:
        pass
      time.sleep(0.1)
    raise errors.WorkdirError(f'{self.path} exists but is not a lock this program wrote ({text[:80]!r}). If no run '
                              'uses this workdir, delete that file and start again.')

  def acquire(self) -> None:
    if jax.process_index() != 0:
      return
    os.makedirs(self.workdir, exist_ok=True)
    for _ in range(3):
      if self._create():
        return
      holder = self._holder()
      if holder is None:  # released between our attempt and the read: try again
        continue
      if holder.get('host') != socket.gethostname():
        raise errors.WorkdirError(
            f'The workdir {self.workdir} is in use by another run ({_describe(holder)}). Wait for it to end, or use '
            f'another --workdir; if that run is gone (its node crashed), delete {self.path} and start again.')
      if _alive(holder):
        raise errors.WorkdirError(
            f'The workdir {self.workdir} is in use by another run ({_describe(holder)}). Wait for it to end (or stop '
            f'it: kill {holder["pid"]}), or use another --workdir.')
      self._remove_stale(holder)
    raise errors.WorkdirError(f'Could not take the lock {self.path}: other runs keep taking it. Use another --workdir.')

  def _remove_stale(self, holder: dict[str, Any]) -> None:
    """Removes a lock of a dead process, unless another run replaced it meanwhile (then it is put back)."""
    aside = f'{self.path}.stale-{os.getpid()}'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return
    try:
      with open(aside) as f:
        moved = json.load(f)
    except (OSError, json.JSONDecodeError):
      moved = None
    if moved != holder:  # a live run took the lock between our read and the rename: give it back
      try:
        os.link(aside, self.path)
      except FileExistsError:
        pass
      os.remove(aside)
      return
    os.remove(aside)
    logging.warning('Recovered the lock %s left by a run that is no longer running (%s).', self.path,
                    _describe(holder))

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    try:
      with open(self.path) as f:
        mine = json.load(f).get('pid') == os.getpid()
    except (OSError, json.JSONDecodeError):
      mine = False
    if mine:
      try:
        os.remove(self.path)
      except OSError as e:
        if e.errno != errno.ENOENT:
          raise


def record_config(config: ml_collections.ConfigDict, workdir: str, start_step: int) -> None:
  """Writes `config.json` (this launch's resolved config) and appends it, with the time and the step the launch
  starts from, to `config_history.jsonl`. Called once the launch is validated, just before training starts."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  files.write_atomic(os.path.join(workdir, 'config.json'), text)
  entry = {'time': datetime.datetime.now().astimezone().isoformat(timespec='seconds'), 'start_step': int(start_step),
           'config': json.loads(text)}
  with open(os.path.join(workdir, HISTORY_FILE), 'a') as f:
    f.write(json.dumps(entry, sort_keys=True) + '\n')
