"""SYNTHIA-RAND-CITYSCAPES files: listing and checking the image/label pairs, reading and writing the label PNGs.

Layout: `<root>/RGB/NNNNNNN.png` (8-bit RGB) and `<root>/GT/LABELS/NNNNNNN.png`, a 16-bit PNG whose first channel is
the SYNTHIA class id (labels.SYNTHIA_LABELS; the second holds an instance id). The references read it with imageio's
FreeImage plugin and take `[:, :, 0]`.

Pillow does not read these labels: it opens a 16-bit RGB PNG as 8-bit 'RGB' and keeps the high byte of each sample
(ids 0..255 all become 0; checked with Pillow 13.0 on a PNG written byte by byte), so every class would be void.
pyspng (libspng) decodes them faithfully and fast (about 0.04 s for a 760x1280 label); pypng, pure Python, writes
them (its reader needs about 1.2 s for such a label with Paeth-filtered rows, too slow for 9,400 of them).
"""

from __future__ import annotations

import concurrent.futures
import os
import struct

import numpy as np
import png  # pypng
import pyspng

from rtda_jax import data as data_lib
from rtda_jax import labels
from rtda_jax.errors import DataError, MissingFileError

IMAGE_DIR = 'RGB'
LABEL_DIR = os.path.join('GT', 'LABELS')
NUM_THREADS = min(16, os.cpu_count() or 1)  # header checks are file reads: threads overlap them
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_COLOUR_TYPES = {0: 'greyscale', 2: 'RGB', 3: 'palette', 4: 'greyscale+alpha', 6: 'RGBA'}
_HINT = ('A SYNTHIA folder (SYNTHIA-RAND-CITYSCAPES) holds RGB/0000000.png ... and GT/LABELS/0000000.png ... (16-bit '
         'class-id PNGs, not the GT/COLOR images); pass that folder as --config.data.synthia_dir.')


def _unreadable(path: str, error: Exception | str) -> DataError:
  why = error if isinstance(error, str) else f'{type(error).__name__}: {error}'
  return DataError(f'Cannot read {path!r} ({why}): the PNG is unreadable or truncated. Re-extract it from the SYNTHIA '
                   'archive, or delete it together with its image/label.')


def _read(path: str, head_only: bool = False) -> bytes:
  """The file's bytes (head_only: its first 33 bytes, the PNG signature and IHDR, then its last 64)."""
  try:
    with open(path, 'rb') as f:
      if not head_only:
        return f.read()
      head = f.read(33)
      f.seek(max(33, os.fstat(f.fileno()).st_size - 64))
      return head + f.read()
  except FileNotFoundError:
    raise MissingFileError(f'{path!r} does not exist. {_HINT}') from None
  except OSError as e:
    raise _unreadable(path, e) from None


def _header(path: str, data: bytes) -> tuple[int, int, int, int]:
  """(width, height, bit depth, colour type) from a PNG's IHDR; checks that the file ends with the IEND chunk."""
  if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b'IHDR':
    raise _unreadable(path, 'not a PNG file')
  if b'IEND' not in data[-64:]:
    raise _unreadable(path, 'no IEND chunk at the end of the file')
  width, height, depth, colour = struct.unpack('>IIBB', data[16:26])
  return width, height, depth, colour


def _check_label_format(path: str, depth: int, colour: int) -> None:
  if depth == 16 and colour in (0, 2, 6):  # SYNTHIA's is RGB; greyscale and RGBA hold the ids the same way
    return
  kind = f'{depth}-bit {_COLOUR_TYPES.get(colour, f"colour type {colour}")}'
  if depth == 8 and colour in (2, 6):
    why = 'a colour image: the GT/COLOR visualisation rather than GT/LABELS?'
  elif depth == 8:
    why = ('8-bit ids: a copy converted to other ids (e.g. Cityscapes train ids) rather than the original '
           'GT/LABELS?')
  else:
    why = 'not a SYNTHIA class-id label.'
  raise DataError(f'Label {path!r} is a {kind} PNG, {why} SYNTHIA labels are 16-bit PNGs with the class id in the '
                  f'first channel. {_HINT}')


def check_pair(image_path: str, label_path: str) -> None:
  """Cheap checks from the file headers: readable PNGs, a 16-bit class-id label, label size == image size."""
  iw, ih, _, _ = _header(image_path, _read(image_path, head_only=True))
  lw, lh, depth, colour = _header(label_path, _read(label_path, head_only=True))
  _check_label_format(label_path, depth, colour)
  if (iw, ih) != (lw, lh):
    raise DataError(f'Label {label_path!r} is {lw}x{lh} (WxH) but its image {image_path!r} is {iw}x{ih}. Restore the '
                    'right label, or delete both files, and prepare again.')


def list_pairs(root: str, check: bool = True, num_threads: int | None = None) -> list[tuple[str, str]]:
  """[(image path, label path)] of a SYNTHIA folder, sorted by name; every image has its label and vice versa.

  check: also `check_pair` every pair (headers only, in parallel). Ids outside the table are found where a label is
  decoded (read_label), since that needs its pixels.
  """
  if not os.path.isdir(root):
    raise MissingFileError(f'SYNTHIA folder {root!r} does not exist or is not a folder. {_HINT}')
  image_dir, label_dir = os.path.join(root, IMAGE_DIR), os.path.join(root, LABEL_DIR)
  for folder in (image_dir, label_dir):
    if not os.path.isdir(folder):
      raise MissingFileError(f'SYNTHIA folder {root!r} has no {os.path.relpath(folder, root)!r} folder. {_HINT}')
  images, labs = data_lib.pngs(image_dir), data_lib.pngs(label_dir)
  if not images:
    raise DataError(f'No PNG images in {image_dir!r}. {_HINT}')
  data_lib.check_paired(images, labs, image_dir, label_dir, MissingFileError)
  pairs = [(os.path.join(image_dir, n), os.path.join(label_dir, n)) for n in images]
  if check:
    with concurrent.futures.ThreadPoolExecutor(num_threads or NUM_THREADS) as pool:
      for _ in pool.map(lambda pair: check_pair(*pair), pairs):
        pass
  return pairs


def read_label(path: str, check_ids: bool = True) -> np.ndarray:
  """[H, W] uint16 SYNTHIA class ids: the first channel of a 16-bit label PNG. DataError naming the file when it is
  unreadable, not a 16-bit label, or (check_ids) holds an id outside labels.SYNTHIA_LABELS; the TFDS builder passes
  check_ids=False and applies data.unknown_label_ids itself."""
  data = _read(path)
  _, _, depth, colour = _header(path, data)
  _check_label_format(path, depth, colour)
  try:
    decoded = pyspng.load(data)  # [H, W, C] uint16 (C = 2 or 4: libspng adds an alpha channel)
  except (RuntimeError, ValueError) as e:
    raise _unreadable(path, e) from None
  ids = np.ascontiguousarray(decoded[..., 0] if decoded.ndim == 3 else decoded, dtype=np.uint16)  # [H, W]
  outside = ids > labels.SYNTHIA_MAX_ID
  if check_ids and outside.any():
    found = np.unique(ids[outside])
    raise DataError(f'Label {path!r} holds class id(s) {found[:5].tolist()}{" ..." if found.size > 5 else ""} at '
                    f'{int(outside.sum())} pixel(s), outside the SYNTHIA table (0..{labels.SYNTHIA_MAX_ID}): it is not '
                    f'a SYNTHIA-RAND-CITYSCAPES GT/LABELS PNG. Re-extract it, or delete it together with its image.')
  return ids


def read_train_ids(path: str) -> np.ndarray:
  """[H, W] uint8 Cityscapes train ids (255 = ignore) of a SYNTHIA label PNG (read_label, labels.SYNTHIA_TO_TRAIN)."""
  return labels.SYNTHIA_TO_TRAIN[read_label(path)]


def write_label(path: str, ids: np.ndarray, instances: np.ndarray | None = None) -> None:
  """Writes a label PNG as SYNTHIA stores them: 16-bit RGB, class ids [H, W] in the first channel, instance ids
  (default 0) in the second, 0 in the third. Any uint16 id is written (the reader rejects ids outside the table)."""
  ids = np.asarray(ids)
  if ids.ndim != 2 or ids.size == 0:
    raise ValueError(f'{path}: ids must be a non-empty [H, W] array, got shape {ids.shape}')
  channels = [ids] + ([np.zeros_like(ids)] if instances is None else [np.asarray(instances)])
  for name, c in zip(('ids', 'instances'), channels):
    if c.shape != ids.shape or not np.issubdtype(c.dtype, np.integer) or c.min() < 0 or c.max() > 0xFFFF:
      raise ValueError(f'{path}: {name} must be integers in 0..65535 of shape {ids.shape}, got {c.dtype} {c.shape}')
  h, w = ids.shape
  rgb = np.zeros((h, w, 3), np.uint16)  # [H, W, 3]
  rgb[..., 0], rgb[..., 1] = channels
  with open(path, 'wb') as f:
    png.Writer(w, h, greyscale=False, bitdepth=16).write(f, rgb.reshape(h, w * 3))
