"""Datasets: the embedded benchmark's generator, the TFDS builders, the grain pipelines, rare-class sampling."""

from __future__ import annotations

import os
import shutil


def replace_folder(tmp: str, out_dir: str) -> None:
  """Swaps the complete folder `tmp` in as `out_dir` (the old one, if any, is moved aside and then deleted), so
  `out_dir` is at every moment either the old complete folder or the new one, never a partial write."""
  old = f'{out_dir}.old-{os.getpid()}'
  shutil.rmtree(old, ignore_errors=True)
  if os.path.exists(out_dir):
    os.replace(out_dir, old)
  os.replace(tmp, out_dir)
  shutil.rmtree(old, ignore_errors=True)
