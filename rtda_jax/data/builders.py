"""TFDS builders (TensorFlow-free, array_record) for GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes folders.

Each example holds `image` (PNG bytes, RGB, resized bilinear/antialiased to the stored resolution), `label` (PNG
bytes, 8-bit train ids 0..18 / 255, resized nearest to the same resolution) and `name` (the path relative to the
raw folder). Builds go through `tfds.core.ShardBasedBuilder`, which writes shard by shard and never reaches the
TFDS shuffler (that spills to disk through TensorFlow past 1 GB), so no dataset size needs TensorFlow.

Each domain has a raw folder field `data.<domain>_dir` (None = the embedded benchmark's) and a stored size field
`data.<domain>_size` (`FIELDS`). SYNTHIA's 16-bit label PNGs are read with synthia.py (Pillow cannot), its class ids
mapped with labels.SYNTHIA_TO_TRAIN (terrain, truck and train become ignore).

Built datasets live in `<data.root>/tfds/<source key>/<gta5|synthia|cityscapes>/<H>x<W>/<version>/`; the source key is
'synthetic' for the embedded benchmark and `<folder name>-<hash of its absolute path>` for a real folder, so the two
never mix. A `source.json` beside the shards records a fingerprint of the raw files; `prepare` rebuilds when it
changes (e.g. the benchmark was regenerated with other settings) and reuses the build otherwise.

Label ids are checked while converting: an id that is neither in the dataset's id table (`TABLE_IDS`) nor one of
its ignore values (`IGNORE_IDS`) is a DatasetError naming the file and the ids, unless `unknown_label_ids='ignore'`
(`data.unknown_label_ids`) maps such ids to 255 on purpose; a split in which no pixel has a train id is an error too.
Every error here is an `errors.UserError` (DatasetError; MissingDatasetError for a file or folder that is not there).

An evaluation protocol that scores at the raw label resolution (evaluate.py) also needs a split at the size of its
raw files: `prepare(..., raw_splits=('val',))` builds those splits of the target domain at that size (1024x2048 for
real Cityscapes) with the same builders, only those splits, and records the size beside the builds
(`<domain>-raw-size.json`) for `load_raw_builder`. When the stored size is the raw size both are one build.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import logging
from PIL import Image

from rtda_jax import data as data_lib
from rtda_jax import errors, files, labels
from rtda_jax.data import synthia

DOMAINS = ('gta5', 'cityscapes', 'synthia')
SPLITS = {'gta5': ('train',), 'cityscapes': ('train', 'val'), 'synthia': ('train',)}
LUTS = {'gta5': labels.GTA5_TO_TRAIN, 'cityscapes': labels.CITYSCAPES_TO_TRAIN, 'synthia': labels.SYNTHIA_TO_TRAIN}
# Each domain's config fields: (raw folder, stored [H, W]).
FIELDS = {d: (f'{d}_dir', f'{d}_size') for d in DOMAINS}
SHARD_BYTES = 256 << 20  # TFDS holds a whole shard in memory while writing it: keep shards near this size
PNG_COMPRESS_LEVEL = 1  # fast to write; decoding speed does not depend on it
LABEL_MODES = ('P', 'L', 'I', 'I;16')  # 8/16/32-bit label ids; 'P' palette indices are the ids
SOURCE_FILE = 'source.json'
RAW_SIZE_FILE = '{domain}-raw-size.json'  # beside the builds: {split: [H, W]} of the raw-resolution builds
NUM_THREADS = min(16, os.cpu_count() or 1)  # Pillow releases the GIL: threads convert images in parallel
_CS_IMAGE_SUFFIX = '_leftImg8bit.png'
# Raw label ids a dataset's label files hold: the ids of its table (GTA5 stores Cityscapes ids) and the values that
# mean "unlabelled". Any other id is a wrong file (train ids, colours, another dataset's ids) unless
# unknown_label_ids='ignore'. A dataset without an entry here is not checked (a new builder adds its ids).
TABLE_IDS = {'gta5': tuple(l.id for l in labels.LABELS), 'cityscapes': tuple(l.id for l in labels.LABELS),
             'synthia': tuple(l.id for l in labels.SYNTHIA_LABELS)}
IGNORE_IDS = {'gta5': (labels.IGNORE,), 'cityscapes': (labels.IGNORE,), 'synthia': ()}  # SYNTHIA: void is id 0
_TABLE_NAMES = {'gta5': 'the Cityscapes label ids', 'cityscapes': 'the Cityscapes label ids',
                'synthia': 'the SYNTHIA class ids'}
UNKNOWN_LABEL_IDS = ('error', 'ignore')  # data.unknown_label_ids
_CS_LABEL_SUFFIX = '_gtFine_labelIds.png'


class DatasetError(errors.DataError):
  """A raw dataset folder or a built dataset is not as expected. The message names the file and says what to do."""


class MissingDatasetError(DatasetError, errors.MissingFileError):
  """A raw folder, a raw file or a built dataset that should exist does not (a DatasetError and a FileNotFoundError)."""


@dataclasses.dataclass(frozen=True)
class Example:
  """One image/label pair of a raw folder; `name` is the image path relative to the folder."""
  image_path: str
  label_path: str
  name: str


# ---- finding and validating raw files --------------------------------------------------------------------------


def _require_dir(path: str, what: str, hint: str) -> None:
  if not os.path.isdir(path):
    raise MissingDatasetError(f'{what} {path!r} does not exist or is not a folder. {hint}')




def _find_gta5(root: str) -> dict[str, list[Example]]:
  hint = ('A GTA5 folder holds images/00001.png ... and labels/00001.png ...; pass that folder as '
          '--config.data.gta5_dir, or leave it unset to use the embedded benchmark.')
  _require_dir(root, 'GTA5 folder', hint)
  image_dir, label_dir = os.path.join(root, 'images'), os.path.join(root, 'labels')
  _require_dir(image_dir, 'GTA5 image folder', f'Expected layout: {hint}')
  _require_dir(label_dir, 'GTA5 label folder', f'Expected layout: {hint}')
  images, labs = data_lib.pngs(image_dir), data_lib.pngs(label_dir)
  if not images:
    raise DatasetError(f'No PNG images in {image_dir!r}. {hint}')
  data_lib.check_paired(images, labs, image_dir, label_dir, MissingDatasetError)
  return {'train': [Example(os.path.join(image_dir, n), os.path.join(label_dir, n), f'images/{n}') for n in images]}


def _find_cityscapes(root: str) -> dict[str, list[Example]]:
  hint = ('A Cityscapes folder holds leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and '
          'gtFine/{train,val}/<city>/*_gtFine_labelIds.png; pass that folder as --config.data.cityscapes_dir, or '
          'leave it unset to use the embedded benchmark.')
  _require_dir(root, 'Cityscapes folder', hint)
  out = {}
  for split in SPLITS['cityscapes']:
    image_root, label_root = os.path.join(root, 'leftImg8bit', split), os.path.join(root, 'gtFine', split)
    _require_dir(image_root, 'Cityscapes image folder', f'Expected layout: {hint}')
    _require_dir(label_root, 'Cityscapes label folder', f'Expected layout: {hint}')
    pairs = {}  # stem 'city/city_seq_frame' -> (image path or None, label path or None)
    for top, suffix, slot in ((image_root, _CS_IMAGE_SUFFIX, 0), (label_root, _CS_LABEL_SUFFIX, 1)):
      for city in sorted(c for c in os.listdir(top) if os.path.isdir(os.path.join(top, c))):
        for f in data_lib.pngs(os.path.join(top, city)):
          if f.endswith(suffix):
            entry = pairs.setdefault(f'{city}/{f[:-len(suffix)]}', [None, None])
            entry[slot] = os.path.join(top, city, f)
    for stem, (image, label) in sorted(pairs.items()):
      if label is None:
        raise MissingDatasetError(
            f'Image {image!r} has no label {os.path.join(label_root, stem + _CS_LABEL_SUFFIX)!r}. Restore the label '
            '(from gtFine_trainvaltest.zip) or delete the image.')
      if image is None:
        raise MissingDatasetError(
            f'Label {label!r} has no image {os.path.join(image_root, stem + _CS_IMAGE_SUFFIX)!r}. Restore the image '
            '(from leftImg8bit_trainvaltest.zip) or delete the label.')
    if not pairs:
      raise DatasetError(f'No *{_CS_IMAGE_SUFFIX} images in {image_root!r}. {hint}')
    out[split] = [Example(image, label, f'leftImg8bit/{split}/{stem}{_CS_IMAGE_SUFFIX}')
                  for stem, (image, label) in sorted(pairs.items())]
  return out


@contextlib.contextmanager
def _as_dataset_errors() -> Iterator[None]:
  """synthia.py's errors (which name the file) as this module's DatasetError / MissingDatasetError."""
  try:
    yield
  except errors.MissingFileError as e:
    raise MissingDatasetError(str(e)) from None
  except errors.DataError as e:
    if isinstance(e, DatasetError):
      raise
    raise DatasetError(str(e)) from None


def _find_synthia(root: str) -> dict[str, list[Example]]:
  """SYNTHIA-RAND-CITYSCAPES: RGB/NNNNNNN.png and GT/LABELS/NNNNNNN.png (synthia.list_pairs), split 'train'."""
  with _as_dataset_errors():
    pairs = synthia.list_pairs(root, check=False)
  return {'train': [Example(image, label, os.path.relpath(image, root).replace(os.sep, '/')) for image, label in pairs]}


_FINDERS = {'gta5': _find_gta5, 'cityscapes': _find_cityscapes, 'synthia': _find_synthia}


def find_examples(domain: str, raw_dir: str) -> dict[str, list[Example]]:
  """Lists the image/label pairs of each split of a raw folder (sorted by name); checks layout and pairing."""
  if domain not in DOMAINS:
    raise errors.ConfigError(f'Unknown dataset {domain!r}; choose one of {DOMAINS}.')
  return _FINDERS[domain](raw_dir)


def _unreadable(path: str, error: Exception) -> DatasetError:
  return DatasetError(f'Cannot read {path!r} ({type(error).__name__}: {error}): the PNG is unreadable or truncated. '
                      'Re-extract it from the dataset archive, or delete it together with its image/label.')


def _header(path: str) -> tuple[tuple[int, int], str]:
  """(W, H) and mode of a PNG from its header; also checks that the file ends with the PNG end chunk."""
  try:
    with Image.open(path) as im:
      size, mode, fmt = im.size, im.mode, im.format
    with open(path, 'rb') as f:
      f.seek(max(0, os.path.getsize(path) - 64))
      tail = f.read()
  except (OSError, SyntaxError, ValueError) as e:
    raise _unreadable(path, e) from None
  if fmt == 'PNG' and b'IEND' not in tail:
    raise _unreadable(path, OSError('no IEND chunk at the end of the file'))
  return size, mode


def _check_pair(ex: Example, image_size: tuple[int, int], label_size: tuple[int, int], label_mode: str) -> None:
  if label_mode not in LABEL_MODES:
    raise DatasetError(f'Label {ex.label_path!r} has mode {label_mode!r}; expected label ids ({LABEL_MODES}), '
                       'e.g. gtFine_labelIds.png, not the colour images.')
  if image_size != label_size:
    raise DatasetError(
        f'Label {ex.label_path!r} is {label_size[0]}x{label_size[1]} (WxH) but its image {ex.image_path!r} is '
        f'{image_size[0]}x{image_size[1]}. Real GTA5 has a few such pairs: delete both files and prepare again.')


def check_example(ex: Example, domain: str | None = None) -> None:
  """Cheap checks from the file headers: readable PNGs, an id label (8-bit; SYNTHIA: 16-bit, synthia.check_pair),
  label size == image size."""
  if domain == 'synthia':
    with _as_dataset_errors():
      synthia.check_pair(ex.image_path, ex.label_path)
    return
  image_size, _ = _header(ex.image_path)
  label_size, label_mode = _header(ex.label_path)
  _check_pair(ex, image_size, label_size, label_mode)


def validate(domain: str, raw_dir: str, num_threads: int | None = None,
             splits: Sequence[str] | None = None) -> dict[str, list[Example]]:
  """find_examples + check_example on every pair (in parallel) of `splits` (default all), before anything is
  written."""
  found = find_examples(domain, raw_dir)
  splits = {s: found[s] for s in _select_splits(domain, raw_dir, found, splits)}
  every = [ex for exs in splits.values() for ex in exs]
  with concurrent.futures.ThreadPoolExecutor(num_threads or NUM_THREADS) as pool:
    checked = pool.map(lambda ex: check_example(ex, domain), every)
    for _ in tqdm.tqdm(checked, total=len(every), desc=f'check {domain}', leave=False):
      pass
  return splits


def _select_splits(domain: str, raw_dir: str, found: Mapping[str, Sequence[Example]],
                   splits: Sequence[str] | None) -> list[str]:
  """The requested splits in the folder's order (all when None); DatasetError for a split the folder lacks."""
  if splits is None:
    return list(found)
  for split in splits:
    if split not in found:
      raise DatasetError(f'The {domain} folder {raw_dir!r} has no split {split!r}; it has {sorted(found)}.')
  return [s for s in found if s in splits]


def raw_size(domain: str, raw_dir: str, split: str) -> tuple[int, int]:
  """(H, W) of every image of `split` in a raw folder, from the PNG headers (no image is decoded); DatasetError
  naming two files of different sizes, since a split evaluated at its raw resolution is batched whole."""
  found = find_examples(domain, raw_dir)
  _select_splits(domain, raw_dir, found, [split])
  sizes: dict[tuple[int, int], str] = {}
  for ex in found[split]:
    (w, h), _ = _header(ex.image_path)
    sizes.setdefault((h, w), ex.image_path)
    if len(sizes) > 1:
      (a, path_a), (b, path_b) = sizes.items()
      raise DatasetError(
          f'{path_a!r} is {a[1]}x{a[0]} but {path_b!r} is {b[1]}x{b[0]} (WxH): the {domain} {split} split can only '
          'be used at its raw resolution (evaluation protocols that score at the raw label size) when every image '
          'has one size. Resize the odd files, or evaluate at the stored size (eval.protocol=stored).')
  return next(iter(sizes))


def fingerprint(splits: Mapping[str, Sequence[Example]]) -> str:
  """A hash of every file's name, size and modification time (cheap: no file is read)."""
  h = hashlib.sha1()
  for split in sorted(splits):
    for ex in splits[split]:
      for path in (ex.image_path, ex.label_path):
        st = os.stat(path)
        h.update(f'{split}|{ex.name}|{os.path.basename(path)}|{st.st_size}|{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()


# ---- converting one example ------------------------------------------------------------------------------------


def _load(path: str) -> tuple[Image.Image, bytes]:
  """A fully decoded image and the file's bytes."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
    im = Image.open(io.BytesIO(data))
    im.load()
  except (OSError, SyntaxError, ValueError) as e:
    raise _unreadable(path, e) from None
  return im, data


def encode_png(array: np.ndarray) -> bytes:
  """[H, W, 3] or [H, W] uint8 -> PNG bytes."""
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG', compress_level=PNG_COMPRESS_LEVEL)
  return buf.getvalue()


def check_unknown_label_ids(unknown_label_ids: str) -> str:
  """The value of `data.unknown_label_ids`, checked: 'error' or 'ignore'."""
  if unknown_label_ids not in UNKNOWN_LABEL_IDS:
    raise errors.ConfigError(f'config.data.unknown_label_ids={unknown_label_ids!r}; choose one of '
                             f'{UNKNOWN_LABEL_IDS}.')
  return unknown_label_ids


def unknown_ids(raw: np.ndarray, domain: str) -> tuple[np.ndarray, np.ndarray]:
  """The raw label ids of [H, W] `raw` that are neither in `domain`'s table nor its ignore values, and their pixel
  counts (sorted by id; both empty when every id is known)."""
  known = np.asarray(TABLE_IDS[domain] + IGNORE_IDS[domain], np.int64)
  if raw.dtype == np.uint8:
    counts = np.bincount(raw.reshape(-1), minlength=256)  # [256] pixels of each id
    counts[known[(known >= 0) & (known < 256)]] = 0
    ids = np.flatnonzero(counts)
    return ids, counts[ids]
  ids, counts = np.unique(raw.astype(np.int64), return_counts=True)
  bad = ~np.isin(ids, known)
  return ids[bad], counts[bad]


def _unknown_ids_error(ex: Example, domain: str, ids: np.ndarray, counts: np.ndarray, size: int) -> DatasetError:
  shown = ', '.join(f'{i} ({c} px)' for i, c in zip(ids[:8].tolist(), counts[:8].tolist()))
  more = f' and {len(ids) - 8} more' if len(ids) > 8 else ''
  return DatasetError(
      f'Label {ex.label_path!r} holds ids {shown}{more} of its {size} pixels that are neither in the {domain} label '
      f'table ({_TABLE_NAMES.get(domain, "its ids")} {min(TABLE_IDS[domain])}..{max(TABLE_IDS[domain])}) nor its '
      f'ignore value {", ".join(map(str, IGNORE_IDS[domain])) or "(none)"}. Label files hold label ids '
      '(gtFine_labelIds.png, GTA5 labels/, SYNTHIA GT/LABELS), not train ids or colours: check the file, or pass '
      '--config.data.unknown_label_ids=ignore to map such ids to ignore (255) on purpose.')


def _convert(ex: Example, size: tuple[int, int], lut: np.ndarray, domain: str | None = None,
             unknown_label_ids: str = 'error') -> tuple[dict[str, Any], bool]:
  """convert_example, and whether the label has a pixel with a train id (not ignore). Ids are mapped to train ids
  at the label's own size, then resized nearest (the same as resizing the ids first: a pointwise map commutes with
  picking the nearest pixel)."""
  h, w = size
  image, image_bytes = _load(ex.image_path)
  raw = _raw_label(ex, image.size, domain)  # [H, W] label ids
  if domain in TABLE_IDS and unknown_label_ids == 'error':
    ids, counts = unknown_ids(raw, domain)
    if len(ids):
      raise _unknown_ids_error(ex, domain, ids, counts, raw.size)
  train_ids = labels.to_train_ids(raw, lut)  # [H, W] uint8, ids outside the table -> 255
  if train_ids.shape != (h, w):
    train_ids = np.asarray(Image.fromarray(train_ids).resize((w, h), Image.NEAREST))
  example = {'image': _image_png(image, image_bytes, size), 'label': encode_png(train_ids), 'name': ex.name}
  return example, bool((train_ids != labels.IGNORE).any())


def _raw_label(ex: Example, image_size: tuple[int, int], domain: str | None) -> np.ndarray:
  """The label ids of `ex` ([H, W]: 8-bit ids, the palette indices of a 'P' PNG; SYNTHIA's 16-bit class ids through
  synthia.read_label), checked to be the size of its image (W, H)."""
  if domain != 'synthia':
    label, _ = _load(ex.label_path)
    _check_pair(ex, image_size, label.size, label.mode)
    return np.asarray(label)
  with _as_dataset_errors():
    raw = synthia.read_label(ex.label_path, check_ids=False)  # [H, W] uint16 class ids
  if image_size != (raw.shape[1], raw.shape[0]):
    raise DatasetError(
        f'Label {ex.label_path!r} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image {ex.image_path!r} is '
        f'{image_size[0]}x{image_size[1]}. Restore the right label, or delete both files, and prepare again.')
  return raw


def _image_png(image: Image.Image, image_bytes: bytes, size: tuple[int, int]) -> bytes:
  """The stored PNG of a decoded image at (H, W): the file's own bytes when it already is an RGB PNG of that size."""
  h, w = size
  if image.format == 'PNG' and image.mode == 'RGB' and image.size == (w, h):
    return image_bytes  # already what we store: skip a re-encode
  rgb = image.convert('RGB')
  if rgb.size != (w, h):
    rgb = rgb.resize((w, h), Image.BILINEAR)  # antialiased when downscaling
  return encode_png(np.asarray(rgb))  # [H, W, 3]


def convert_example(ex: Example, size: tuple[int, int], lut: np.ndarray, domain: str | None = None,
                    unknown_label_ids: str = 'error') -> dict[str, Any]:
  """Decodes, checks, maps label ids to train ids, resizes to `size` = (H, W) and re-encodes one example. With
  `domain`, a label id outside its table and ignore values is a DatasetError (`unknown_label_ids='error'`) or
  becomes ignore ('ignore')."""
  return _convert(ex, size, lut, domain, unknown_label_ids)[0]


# ---- the TFDS builders -----------------------------------------------------------------------------------------


def size_name(size: Sequence[int]) -> str:
  """(H, W) -> the builder config name 'HxW'."""
  h, w = (int(s) for s in size)
  return f'{h}x{w}'


def images_per_shard(size: Sequence[int]) -> int:
  """Images per shard at stored size (H, W): about SHARD_BYTES of PNGs (guessing 2 bytes a pixel), 16..1024."""
  return int(np.clip(SHARD_BYTES // (2 * size[0] * size[1]), 16, 1024))


class _Progress:
  """One tqdm bar per split, opened by its first shard and closed by its last; counts the labels with a pixel that
  has a train id, and raises a DatasetError (inside the build, which then leaves nothing) when the split has none."""

  def __init__(self, total: int, desc: str, where: str, unknown_label_ids: str):
    self.total, self.desc, self.bar = total, desc, None
    self.where, self.unknown_label_ids = where, unknown_label_ids
    self.done = self.labelled = 0
    self._lock = threading.Lock()

  def update(self, labelled: bool) -> None:
    with self._lock:
      if self.bar is None:
        self.bar = tqdm.tqdm(total=self.total, desc=self.desc, unit='img')
      self.bar.update(1)
      self.done += 1
      self.labelled += int(labelled)
      if self.done >= self.total:
        self.bar.close()
        if not self.labelled:
          mapped = (' (ids outside the label table were mapped to ignore: data.unknown_label_ids=ignore)'
                    if self.unknown_label_ids == 'ignore' else '')
          raise DatasetError(
              f'Every label of {self.where} is ignore: none of its {self.total} label files has a pixel of the '
              f'{labels.NUM_CLASSES} classes{mapped}. Training or evaluating on it would score nothing; check that '
              'the label files hold label ids (gtFine_labelIds.png, GTA5 labels/), not train ids or colours.')


class _ShardGen:
  """One shard's examples, converted in the builder's thread pool (Pillow releases the GIL while it works)."""

  def __init__(self, builder: '_SegmentationBuilder', examples: Sequence[Example], progress: _Progress):
    self._builder, self._examples, self._progress = builder, examples, progress

  def __call__(self) -> Iterator[tuple[str, dict[str, Any]]]:
    b, n = self._builder, len(self._examples)
    results = b._pool.map(_convert, self._examples, [b.size] * n, [LUTS[b.name]] * n, [b.name] * n,
                          [b.unknown_label_ids] * n)
    for ex, (result, labelled) in zip(self._examples, results):
      self._progress.update(labelled)
      yield ex.name, result


class _SegmentationBuilder(tfds.core.ShardBasedBuilder, skip_registration=True):
  """Reads a raw folder (validated by `validate`) into array_record shards of PNG bytes."""

  VERSION = tfds.core.Version('1.0.0')
  # Sizes the configs use; any other 'HxW' works too (TFDS then logs "Using custom data configuration").
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in ('128x256', '256x512', '512x1024', '720x1280')]
  RELEASE_NOTES = {'1.0.0': 'PNG image, PNG train-id label, relative file name.'}

  def __init__(self, *, raw_dir: str | None = None, examples: Mapping[str, Sequence[Example]] | None = None,
               num_threads: int | None = None, unknown_label_ids: str = 'error', **kwargs: Any):
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)
    self.raw_dir, self._examples = raw_dir, examples
    self.unknown_label_ids = check_unknown_label_ids(unknown_label_ids)
    self._num_threads = num_threads or NUM_THREADS
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    # No checksums or metadata files beside this module (and TFDS's lookup needs `importlib_resources`).
    return None

  @property
  def size(self) -> tuple[int, int]:
    """The stored (H, W)."""
    h, w = self.builder_config.name.split('x')
    return int(h), int(w)

  def _info(self) -> tfds.core.DatasetInfo:
    png = tfds.features.Tensor(shape=(), dtype=np.object_)
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{self.name} at {self.builder_config.name}: PNG image, PNG train-id label (255 = ignore).',
        features=tfds.features.FeaturesDict({'image': png, 'label': png, 'name': tfds.features.Text()}))

  def _download_and_prepare(self, dl_manager: Any, download_config: Any = None) -> None:
    if self._examples is None:
      raise DatasetError(f'The {self.name} builder needs validated examples to build; use builders.build().')
    with concurrent.futures.ThreadPoolExecutor(self._num_threads) as pool:
      self._pool = pool
      try:
        super()._download_and_prepare(dl_manager, download_config)
      finally:
        self._pool = None

  def _shard_iterators_per_split(self, dl_manager: Any) -> dict[str, list[_ShardGen]]:
    out = {}
    for split, examples in self._examples.items():
      progress = _Progress(len(examples), f'build {self.name} {split} {self.builder_config.name}',
                           f'the {self.name} {split} split of {self.raw_dir!r}', self.unknown_label_ids)
      step = images_per_shard(self.size)
      out[split] = [_ShardGen(self, examples[i:i + step], progress) for i in range(0, len(examples), step)]
    return out


class Gta5(_SegmentationBuilder, skip_registration=True):
  """GTA5 (or the embedded benchmark's source domain): split 'train'."""
  name = 'gta5'


class Cityscapes(_SegmentationBuilder, skip_registration=True):
  """Cityscapes (or the embedded benchmark's target domain): splits 'train' and 'val'."""
  name = 'cityscapes'


class Synthia(_SegmentationBuilder, skip_registration=True):
  """SYNTHIA-RAND-CITYSCAPES (or the embedded benchmark's SYNTHIA-like source): split 'train'."""
  name = 'synthia'
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in ('128x256', '760x1280')]


BUILDERS = {'gta5': Gta5, 'cityscapes': Cityscapes, 'synthia': Synthia}


# ---- where builds live, building and loading ----------------------------------------------------------------------


def source_key(raw_dir: str | None) -> str:
  """'synthetic' for the embedded benchmark (raw_dir None), else '<folder name>-<8 hex of its absolute path>'."""
  if not raw_dir:
    return 'synthetic'
  path = os.path.abspath(os.path.expanduser(raw_dir))
  slug = re.sub(r'[^A-Za-z0-9_.-]+', '_', os.path.basename(path.rstrip(os.sep)) or 'root')
  return f'{slug}-{hashlib.sha1(path.encode()).hexdigest()[:8]}'


def _configured(data_config: ml_collections.ConfigDict, domain: str) -> tuple[str | None, tuple[int, int]]:
  if domain not in DOMAINS:
    raise errors.ConfigError(f'Unknown dataset {domain!r} (data.source / data.target); choose one of {DOMAINS}.')
  dir_field, size_field = FIELDS[domain]
  if dir_field not in data_config or size_field not in data_config:
    raise errors.ConfigError(f'config.data has no {dir_field!r} / {size_field!r} for dataset {domain!r}: the config '
                             'predates it; start from configs/common.py.')
  return data_config[dir_field], tuple(int(s) for s in data_config[size_field])


def prepared_domains(data_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The domains `prepare` builds: data.source and data.target; GTA5 and Cityscapes together (as always, e.g. for
  `--mode=fid` of gta5:train in an oracle run) unless SYNTHIA is one of them, so a GTA5 run never generates SYNTHIA
  and a SYNTHIA run never GTA5."""
  used = {data_config.source, data_config.target}
  for domain in sorted(used):
    if domain not in DOMAINS:
      raise errors.ConfigError(f'Unknown dataset {domain!r} (data.source / data.target); choose one of {DOMAINS}.')
  if 'synthia' not in used:
    used |= {'gta5', 'cityscapes'}
  return tuple(d for d in DOMAINS if d in used)


def make_builder(domain: str, data_dir: str, size: Sequence[int], **kwargs: Any) -> _SegmentationBuilder:
  """The builder of `domain` at stored size (H, W) under `data_dir` (nothing is built)."""
  name = size_name(size)
  known = name in BUILDERS[domain].builder_configs
  config = name if known else tfds.core.BuilderConfig(name=name)
  with _quiet_absl():  # TFDS warns about custom configs and not-yet-built folders
    return BUILDERS[domain](data_dir=data_dir, config=config, **kwargs)


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def _is_prepared(builder: _SegmentationBuilder) -> bool:
  with _quiet_absl():
    return builder.is_prepared()


def _read_source(builder: _SegmentationBuilder) -> dict[str, Any] | None:
  path = os.path.join(os.fspath(builder.data_dir), SOURCE_FILE)
  if not _is_prepared(builder) or not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def build(domain: str, raw_dir: str, data_dir: str, size: Sequence[int], num_threads: int | None = None,
          splits: Sequence[str] | None = None, unknown_label_ids: str = 'error') -> _SegmentationBuilder:
  """Builds `domain` from `raw_dir` into `data_dir` at (H, W), or reuses an up-to-date build. Returns the builder.

  `splits` (default: every split of the folder) are the splits the build must hold; a build at that size that
  holds them and whose raw files did not change is reused, else it is rebuilt with them (and the splits it had).
  `unknown_label_ids` ('error' | 'ignore', data.unknown_label_ids) applies while building."""
  check_unknown_label_ids(unknown_label_ids)
  with files.file_lock(os.path.join(data_dir, f'.{domain}-{size_name(size)}.lock')):
    return _build_locked(domain, raw_dir, data_dir, size, num_threads, splits, unknown_label_ids)


def _build_locked(domain: str, raw_dir: str, data_dir: str, size: Sequence[int], num_threads: int | None,
                  splits: Sequence[str] | None, unknown_label_ids: str = 'error') -> _SegmentationBuilder:
  builder = make_builder(domain, data_dir, size)
  recorded = _read_source(builder)
  if recorded is not None and not os.path.isdir(raw_dir):
    missing = [s for s in splits or () if s not in builder.info.splits]
    if missing:
      raise MissingDatasetError(f'Raw folder {raw_dir!r} is gone and the {domain} dataset built from it at '
                                f'{os.fspath(builder.data_dir)!r} has no split {missing[0]!r}: restore the raw folder.')
    logging.warning('Raw folder %s is gone; using the dataset built from it at %s.', raw_dir, builder.data_dir)
    return builder
  found = find_examples(domain, raw_dir)
  wanted = _select_splits(domain, raw_dir, found, splits)
  had = list(recorded.get('splits', recorded.get('num_examples', ()))) if recorded is not None else []
  if recorded is not None and recorded.get('fingerprint') == fingerprint({s: found[s] for s in had if s in found}):
    if set(wanted) <= set(had):
      return builder  # up to date: no work
    logging.warning('%s lacks split(s) %s; rebuilding it with them.', builder.data_dir, sorted(set(wanted) - set(had)))
  elif recorded is not None or _is_prepared(builder):
    logging.warning('Raw files of %s changed since %s was built; rebuilding.', raw_dir, builder.data_dir)
  if recorded is not None or _is_prepared(builder):
    shutil.rmtree(os.fspath(builder.data_dir))
  selected = validate(domain, raw_dir, num_threads, splits=[s for s in found if s in wanted or s in had])
  builder = make_builder(domain, data_dir, size, raw_dir=raw_dir, examples=selected, num_threads=num_threads,
                         unknown_label_ids=unknown_label_ids)
  builder.download_and_prepare(download_dir=os.path.join(data_dir, 'downloads'))
  source = {'raw_dir': os.path.abspath(raw_dir), 'fingerprint': fingerprint(selected), 'splits': list(selected),
            'num_examples': {s: len(e) for s, e in selected.items()}}
  files.write_json(os.path.join(os.fspath(builder.data_dir), SOURCE_FILE), source)
  return make_builder(domain, data_dir, size)  # a fresh reader that sees the written splits


def data_dir_for(data_config: ml_collections.ConfigDict, domain: str) -> str:
  """`<data.root>/tfds/<source key>`: the TFDS data_dir of `domain` under this config."""
  raw, _ = _configured(data_config, domain)
  return os.path.join(data_config.root, 'tfds', source_key(raw))


def prepare(data_config: ml_collections.ConfigDict, num_threads: int | None = None,
            raw_splits: Sequence[str] = ()) -> dict[str, _SegmentationBuilder]:
  """Generates the embedded benchmark if needed, then builds (or reuses) the datasets of `prepared_domains`.
  Returns {name: builder}.

  `raw_splits`: splits of the target domain (`data.target`) to build also at the raw resolution of their files,
  for an evaluation that scores there (the caller says which; evaluate.raw_splits); returned as '<target>_raw'.

  In a multi-process launch process 0 generates and builds first while the others wait; then they find everything
  built and only open it (a file lock orders the processes of one host, not those of several on a shared file
  system). Every process of the launch must call it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if not jax.distributed.is_initialized() or jax.process_count() == 1:  # one process: the backend is not started
    return _prepare(data_config, num_threads, raw_splits)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  out, error = None, None
  if jax.process_index() == 0:
    try:
      out = _prepare(data_config, num_threads, raw_splits)
    except Exception as e:  # pylint: disable=broad-except
      error = e  # re-raised after the barrier: the others then meet the same error themselves instead of waiting
  multihost_utils.sync_global_devices('rtda_jax.data.builders.prepare')
  if error is not None:
    raise error
  return out if jax.process_index() == 0 else _prepare(data_config, num_threads, raw_splits)


def _prepare(data_config: ml_collections.ConfigDict, num_threads: int | None,
             raw_splits: Sequence[str]) -> dict[str, _SegmentationBuilder]:
  from rtda_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  unknown = check_unknown_label_ids(data_config.get('unknown_label_ids', 'error'))
  domains = prepared_domains(data_config)
  raw_dirs = synthetic.ensure_domains(data_config, domains)
  out = {}
  for domain in domains:
    _, size = _configured(data_config, domain)
    out[domain] = build(domain, raw_dirs[domain], data_dir_for(data_config, domain), size, num_threads,
                        unknown_label_ids=unknown)
    logging.info('%s ready at %s: %s', domain, out[domain].data_dir, dict(out[domain].info.splits))
  if raw_splits:
    target = data_config.target
    out[f'{target}_raw'] = build_raw(target, raw_dirs[target], data_dir_for(data_config, target), raw_splits,
                                     num_threads, unknown_label_ids=unknown)
  return out


def _raw_size_path(data_dir: str, domain: str) -> str:
  return os.path.join(data_dir, RAW_SIZE_FILE.format(domain=domain))


def _read_raw_sizes(data_dir: str, domain: str) -> dict[str, tuple[int, int]]:
  path = _raw_size_path(data_dir, domain)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return {split: tuple(int(s) for s in size) for split, size in json.load(f).items()}


def build_raw(domain: str, raw_dir: str, data_dir: str, splits: Sequence[str],
              num_threads: int | None = None, unknown_label_ids: str = 'error') -> _SegmentationBuilder:
  """Builds (or reuses) `splits` of `domain` at the size of their raw files (one size for all of them) and records
  that size for `load_raw_builder`. A raw folder that is gone leaves the recorded size and build in use."""
  recorded = _read_raw_sizes(data_dir, domain)
  sizes = {}
  for split in splits:
    gone = not os.path.isdir(raw_dir) and split in recorded
    sizes[split] = recorded[split] if gone else raw_size(domain, raw_dir, split)
  if len(set(sizes.values())) > 1:
    raise DatasetError(f'The {domain} splits {sorted(sizes)} of {raw_dir!r} have different raw sizes {sizes} (HxW); '
                       'build them at their raw resolution one at a time.')
  size = next(iter(sizes.values()))
  builder = build(domain, raw_dir, data_dir, size, num_threads, splits=splits, unknown_label_ids=unknown_label_ids)
  with files.file_lock(os.path.join(data_dir, f'.{domain}-raw-size.lock')):
    record = {**_read_raw_sizes(data_dir, domain), **sizes}
    files.write_json(_raw_size_path(data_dir, domain), {s: list(v) for s, v in record.items()})
  return builder


def load_builder(data_config: ml_collections.ConfigDict, name: str) -> _SegmentationBuilder:
  """The built dataset `name` ('gta5' | 'cityscapes' | 'synthia') for reading; DatasetError if it was not built yet."""
  _, size = _configured(data_config, name)
  builder = make_builder(name, data_dir_for(data_config, name), size)
  if not _is_prepared(builder):
    raise MissingDatasetError(
        f'Dataset {name!r} at {size_name(size)} is not built in {os.fspath(builder.data_dir)!r}. Run '
        '`python main.py --config=<config> --mode=prepare` (or rtda_jax.data.builders.prepare) first.')
  return builder


def load_raw_builder(data_config: ml_collections.ConfigDict, name: str, split: str) -> _SegmentationBuilder:
  """The build of dataset `name` that holds `split` at its raw resolution (`prepare(..., raw_splits=[split])`);
  DatasetError if it was not built yet."""
  data_dir = data_dir_for(data_config, name)
  size = _read_raw_sizes(data_dir, name).get(split)
  builder = None if size is None else make_builder(name, data_dir, size)
  if builder is None or not _is_prepared(builder) or split not in builder.info.splits:
    raise MissingDatasetError(
        f'The {name} {split} split is not built at its raw resolution in {data_dir!r}. Run '
        '`python main.py --config=<config> --mode=prepare` with the same eval.protocol (or '
        f'rtda_jax.data.builders.prepare(data_config, raw_splits=[{split!r}])) first.')
  return builder
