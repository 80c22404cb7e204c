"""Datasets: the embedded benchmark's generator, the TFDS builders, the grain pipelines, rare-class sampling."""

from __future__ import annotations

import os
import shutil
import socket
from typing import Sequence


def replace_folder(tmp: str, out_dir: str) -> None:
  """Swaps the complete folder `tmp` in as `out_dir` (the old one, if any, is moved aside and then deleted), so
  `out_dir` is at every moment either the old complete folder or the new one, never a partial write."""
  old = f'{out_dir}.old-{socket.gethostname()}-{os.getpid()}'  # one name per writer, across hosts too
  shutil.rmtree(old, ignore_errors=True)
  if os.path.exists(out_dir):
    os.replace(out_dir, old)
  os.replace(tmp, out_dir)
  shutil.rmtree(old, ignore_errors=True)


def pngs(folder: str) -> list[str]:
  """The names of the PNG files of `folder` (not recursive), sorted."""
  return sorted(f for f in os.listdir(folder) if f.lower().endswith('.png'))


def check_paired(images: Sequence[str], label_names: Sequence[str], image_dir: str, label_dir: str,
                 error: type[Exception]) -> None:
  """Raises `error` naming the first image without its label (same file name), or else the first label without its
  image, and what to do."""
  for have, lack, (this, that), (this_dir, that_dir) in (
      (images, label_names, ('Image', 'label'), (image_dir, label_dir)),
      (label_names, images, ('Label', 'image'), (label_dir, image_dir))):
    for name in sorted(set(have) - set(lack))[:1]:
      raise error(f'{this} {os.path.join(this_dir, name)!r} has no {that} '
                  f'{os.path.join(that_dir, name)!r}. Restore the {that} or delete the {this.lower()}.')
