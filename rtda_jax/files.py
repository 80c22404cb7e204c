"""Writing files that other processes may read or write at the same moment: whole-file replacement through a
temporary file of this writer's own, and an exclusive lock between the processes of one host.

Several processes can share a workdir or a data root: the processes of a multi-process launch, an evaluation run
while its training goes on, two launches on one data root. A reader must never see half a file, and two writers of
the same file must not write into one temporary file (`path + '.tmp'` is one inode for both: one's `os.replace`
installs what the other half wrote, and the other's `os.replace` fails).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

_UMASK = os.umask(0)  # read once (os.umask can only be read by setting it), then put back
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would have given: mkstemp's 0o600 would hide results from the group
DIR_MODE = 0o777 & ~_UMASK


def write_atomic(path: str, data: str | bytes | bytearray) -> None:
  """Writes `data` to `path` so that readers see the old file or the new one, never a part; the temporary file
  (in the same folder, so the rename stays on one file system) is unique to this writer and removed on an error."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  try:
    with (os.fdopen(fd, 'w', encoding='utf-8') if isinstance(data, str) else os.fdopen(fd, 'wb')) as f:
      f.write(data)
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def temp_dir_beside(out_dir: str) -> str:
  """A new empty folder `<out_dir>.tmp-XXXX` beside `out_dir` (same file system, so it can be swapped in with
  data.replace_folder), unique to this writer, with the umask's permissions (mkdtemp's 0o700 would hide it from
  the other users of a shared root)."""
  parent, name = os.path.split(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=name + '.tmp-')
  os.chmod(tmp, DIR_MODE)
  return tmp


def write_json(path: str, obj: Any, indent: int | None = 2) -> None:
  """`obj` as JSON (UTF-8, non-ASCII kept), written atomically (write_atomic)."""
  write_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False))


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
  """An exclusive lock on `path` (created if missing) between the processes of one host, held while the block runs:
  processes preparing the same files at once prepare them once. Across hosts, a launch orders its processes
  instead (builders.prepare: process 0 first)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
