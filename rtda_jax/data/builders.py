"""TFDS builders (TensorFlow-free, array_record) for GTA5 and Cityscapes folders.

Each example holds `image` (PNG bytes, RGB, resized bilinear/antialiased to the stored resolution), `label` (PNG
bytes, 8-bit train ids 0..18 / 255, resized nearest to the same resolution) and `name` (the path relative to the
raw folder). Builds go through `tfds.core.ShardBasedBuilder`, which writes shard by shard and never reaches the
TFDS shuffler (that spills to disk through TensorFlow past 1 GB), so no dataset size needs TensorFlow.

Built datasets live in `<data.root>/tfds/<source key>/<gta5|cityscapes>/<H>x<W>/<version>/`; the source key is
'synthetic' for the embedded benchmark and `<folder name>-<hash of its absolute path>` for a real folder, so the two
never mix. A `source.json` beside the shards records a fingerprint of the raw files; `prepare` rebuilds when it
changes (e.g. the benchmark was regenerated with other settings) and reuses the build otherwise.

An evaluation protocol that scores at the raw label resolution (evaluate.py) also needs a split at the size of its
raw files: `prepare(..., raw_splits=('val',))` builds those splits of the target domain at that size (1024x2048 for
real Cityscapes) with the same builders, only those splits, and records the size beside the builds
(`<domain>-raw-size.json`) for `load_raw_builder`. When the stored size is the raw size both are one build.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import logging
from PIL import Image

from rtda_jax import labels

DOMAINS = ('gta5', 'cityscapes')
SPLITS = {'gta5': ('train',), 'cityscapes': ('train', 'val')}
LUTS = {'gta5': labels.GTA5_TO_TRAIN, 'cityscapes': labels.CITYSCAPES_TO_TRAIN}
SHARD_BYTES = 256 << 20  # TFDS holds a whole shard in memory while writing it: keep shards near this size
PNG_COMPRESS_LEVEL = 1  # fast to write; decoding speed does not depend on it
LABEL_MODES = ('P', 'L', 'I', 'I;16')  # 8/16/32-bit label ids; 'P' palette indices are the ids
SOURCE_FILE = 'source.json'
RAW_SIZE_FILE = '{domain}-raw-size.json'  # beside the builds: {split: [H, W]} of the raw-resolution builds
NUM_THREADS = min(16, os.cpu_count() or 1)  # Pillow releases the GIL: threads convert images in parallel
_CS_IMAGE_SUFFIX = '_leftImg8bit.png'
_CS_LABEL_SUFFIX = '_gtFine_labelIds.png'


class DatasetError(ValueError):
  """A raw dataset folder or a built dataset is missing or not as expected. The message says what to do."""


@dataclasses.dataclass(frozen=True)
class Example:
  """One image/label pair of a raw folder; `name` is the image path relative to the folder."""
  image_path: str
  label_path: str
  name: str


# ---- finding and validating raw files --------------------------------------------------------------------------


def _require_dir(path: str, what: str, hint: str) -> None:
  if not os.path.isdir(path):
    raise DatasetError(f'{what} {path!r} does not exist or is not a folder. {hint}')


def _pngs(folder: str) -> list[str]:
  return sorted(f for f in os.listdir(folder) if f.lower().endswith('.png'))


def _find_gta5(root: str) -> dict[str, list[Example]]:
  hint = ('A GTA5 folder holds images/00001.png ... and labels/00001.png ...; pass that folder as '
          '--config.data.gta5_dir, or leave it unset to use the embedded benchmark.')
  _require_dir(root, 'GTA5 folder', hint)
  image_dir, label_dir = os.path.join(root, 'images'), os.path.join(root, 'labels')
  _require_dir(image_dir, 'GTA5 image folder', f'Expected layout: {hint}')
  _require_dir(label_dir, 'GTA5 label folder', f'Expected layout: {hint}')
  images, labs = _pngs(image_dir), _pngs(label_dir)
  if not images:
    raise DatasetError(f'No PNG images in {image_dir!r}. {hint}')
  for have, lack, (this, that), (this_dir, that_dir) in ((images, labs, ('Image', 'label'), (image_dir, label_dir)),
                                                         (labs, images, ('Label', 'image'), (label_dir, image_dir))):
    for name in sorted(set(have) - set(lack))[:1]:
      raise DatasetError(f'{this} {os.path.join(this_dir, name)!r} has no {that} {os.path.join(that_dir, name)!r}. '
                         f'Restore the {that} or delete the {this.lower()}.')
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
        for f in _pngs(os.path.join(top, city)):
          if f.endswith(suffix):
            entry = pairs.setdefault(f'{city}/{f[:-len(suffix)]}', [None, None])
            entry[slot] = os.path.join(top, city, f)
    for stem, (image, label) in sorted(pairs.items()):
      if label is None:
        raise DatasetError(f'Image {image!r} has no label {os.path.join(label_root, stem + _CS_LABEL_SUFFIX)!r}. '
                           'Restore the label (from gtFine_trainvaltest.zip) or delete the image.')
      if image is None:
        raise DatasetError(f'Label {label!r} has no image {os.path.join(image_root, stem + _CS_IMAGE_SUFFIX)!r}. '
                           'Restore the image (from leftImg8bit_trainvaltest.zip) or delete the label.')
    if not pairs:
      raise DatasetError(f'No *{_CS_IMAGE_SUFFIX} images in {image_root!r}. {hint}')
    out[split] = [Example(image, label, f'leftImg8bit/{split}/{stem}{_CS_IMAGE_SUFFIX}')
                  for stem, (image, label) in sorted(pairs.items())]
  return out


def find_examples(domain: str, raw_dir: str) -> dict[str, list[Example]]:
  """Lists the image/label pairs of each split of a raw folder (sorted by name); checks layout and pairing."""
  if domain not in DOMAINS:
    raise ValueError(f'Unknown dataset {domain!r}; choose one of {DOMAINS}.')
  return (_find_gta5 if domain == 'gta5' else _find_cityscapes)(raw_dir)


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


def check_example(ex: Example) -> None:
  """Cheap checks from the file headers: readable PNGs, an 8-bit-id label, label size == image size."""
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
    for _ in tqdm.tqdm(pool.map(check_example, every), total=len(every), desc=f'check {domain}', leave=False):
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


def convert_example(ex: Example, size: tuple[int, int], lut: np.ndarray) -> dict[str, Any]:
  """Decodes, checks, maps label ids to train ids, resizes to `size` = (H, W) and re-encodes one example."""
  h, w = size
  (image, image_bytes), (label, _) = _load(ex.image_path), _load(ex.label_path)
  _check_pair(ex, image.size, label.size, label.mode)
  if image.format == 'PNG' and image.mode == 'RGB' and image.size == (w, h):
    image_png = image_bytes  # already what we store: skip a re-encode
  else:
    rgb = image.convert('RGB')
    if rgb.size != (w, h):
      rgb = rgb.resize((w, h), Image.BILINEAR)  # antialiased when downscaling
    image_png = encode_png(np.asarray(rgb))  # [H, W, 3]
  if label.size != (w, h):
    label = label.resize((w, h), Image.NEAREST)
  train_ids = labels.to_train_ids(np.asarray(label), lut)  # [H, W] uint8, ids outside the table -> 255
  return {'image': image_png, 'label': encode_png(train_ids), 'name': ex.name}


# ---- the TFDS builders -----------------------------------------------------------------------------------------


def size_name(size: Sequence[int]) -> str:
  """(H, W) -> the builder config name 'HxW'."""
  h, w = (int(s) for s in size)
  return f'{h}x{w}'


def images_per_shard(size: Sequence[int]) -> int:
  """Images per shard at stored size (H, W): about SHARD_BYTES of PNGs (guessing 2 bytes a pixel), 16..1024."""
  return int(np.clip(SHARD_BYTES // (2 * size[0] * size[1]), 16, 1024))


class _Progress:
  """One tqdm bar per split, opened by its first shard and closed by its last."""

  def __init__(self, total: int, desc: str):
    self.total, self.desc, self.bar = total, desc, None

  def update(self) -> None:
    if self.bar is None:
      self.bar = tqdm.tqdm(total=self.total, desc=self.desc, unit='img')
    self.bar.update(1)
    if self.bar.n >= self.total:
      self.bar.close()


class _ShardGen:
  """One shard's examples, converted in the builder's thread pool (Pillow releases the GIL while it works)."""

  def __init__(self, builder: '_SegmentationBuilder', examples: Sequence[Example], progress: _Progress):
    self._builder, self._examples, self._progress = builder, examples, progress

  def __call__(self) -> Iterator[tuple[str, dict[str, Any]]]:
    b, n = self._builder, len(self._examples)
    results = b._pool.map(convert_example, self._examples, [b.size] * n, [LUTS[b.name]] * n)
    for ex, result in zip(self._examples, results):
      self._progress.update()
      yield ex.name, result


class _SegmentationBuilder(tfds.core.ShardBasedBuilder, skip_registration=True):
  """Reads a raw folder (validated by `validate`) into array_record shards of PNG bytes."""

  VERSION = tfds.core.Version('1.0.0')
  # Sizes the configs use; any other 'HxW' works too (TFDS then logs "Using custom data configuration").
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in ('128x256', '256x512', '512x1024', '720x1280')]
  RELEASE_NOTES = {'1.0.0': 'PNG image, PNG train-id label, relative file name.'}

  def __init__(self, *, raw_dir: str | None = None, examples: Mapping[str, Sequence[Example]] | None = None,
               num_threads: int | None = None, **kwargs: Any):
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)
    self.raw_dir, self._examples = raw_dir, examples
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
      progress = _Progress(len(examples), f'build {self.name} {split} {self.builder_config.name}')
      step = images_per_shard(self.size)
      out[split] = [_ShardGen(self, examples[i:i + step], progress) for i in range(0, len(examples), step)]
    return out


class Gta5(_SegmentationBuilder, skip_registration=True):
  """GTA5 (or the embedded benchmark's source domain): split 'train'."""
  name = 'gta5'


class Cityscapes(_SegmentationBuilder, skip_registration=True):
  """Cityscapes (or the embedded benchmark's target domain): splits 'train' and 'val'."""
  name = 'cityscapes'


BUILDERS = {'gta5': Gta5, 'cityscapes': Cityscapes}


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
    raise ValueError(f'Unknown dataset {domain!r}; choose one of {DOMAINS}.')
  raw = data_config.gta5_dir if domain == 'gta5' else data_config.cityscapes_dir
  size = data_config.gta5_size if domain == 'gta5' else data_config.cityscapes_size
  return raw, tuple(int(s) for s in size)


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


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
  """An exclusive lock, so that processes preparing the same dataset at once build it once."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def build(domain: str, raw_dir: str, data_dir: str, size: Sequence[int], num_threads: int | None = None,
          splits: Sequence[str] | None = None) -> _SegmentationBuilder:
  """Builds `domain` from `raw_dir` into `data_dir` at (H, W), or reuses an up-to-date build. Returns the builder.

  `splits` (default: every split of the folder) are the splits the build must hold; a build at that size that
  holds them and whose raw files did not change is reused, else it is rebuilt with them (and the splits it had)."""
  with _file_lock(os.path.join(data_dir, f'.{domain}-{size_name(size)}.lock')):
    return _build_locked(domain, raw_dir, data_dir, size, num_threads, splits)


def _build_locked(domain: str, raw_dir: str, data_dir: str, size: Sequence[int], num_threads: int | None,
                  splits: Sequence[str] | None) -> _SegmentationBuilder:
  builder = make_builder(domain, data_dir, size)
  recorded = _read_source(builder)
  if recorded is not None and not os.path.isdir(raw_dir):
    missing = [s for s in splits or () if s not in builder.info.splits]
    if missing:
      raise DatasetError(f'Raw folder {raw_dir!r} is gone and the {domain} dataset built from it at '
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
  builder = make_builder(domain, data_dir, size, raw_dir=raw_dir, examples=selected, num_threads=num_threads)
  builder.download_and_prepare(download_dir=os.path.join(data_dir, 'downloads'))
  source = {'raw_dir': os.path.abspath(raw_dir), 'fingerprint': fingerprint(selected), 'splits': list(selected),
            'num_examples': {s: len(e) for s, e in selected.items()}}
  with open(os.path.join(os.fspath(builder.data_dir), SOURCE_FILE), 'w') as f:
    json.dump(source, f, indent=2)
  return make_builder(domain, data_dir, size)  # a fresh reader that sees the written splits


def data_dir_for(data_config: ml_collections.ConfigDict, domain: str) -> str:
  """`<data.root>/tfds/<source key>`: the TFDS data_dir of `domain` under this config."""
  raw, _ = _configured(data_config, domain)
  return os.path.join(data_config.root, 'tfds', source_key(raw))


def prepare(data_config: ml_collections.ConfigDict, num_threads: int | None = None,
            raw_splits: Sequence[str] = ()) -> dict[str, _SegmentationBuilder]:
  """Generates the embedded benchmark if needed, then builds (or reuses) both datasets. Returns {name: builder}.

  `raw_splits`: splits of the target domain (`data.target`) to build also at the raw resolution of their files,
  for an evaluation that scores there (the caller says which; evaluate.raw_splits); returned as '<target>_raw'.
  """
  from rtda_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  raw_dirs = dict(zip(DOMAINS, synthetic.ensure_benchmark(data_config)))
  out = {}
  for domain in DOMAINS:
    _, size = _configured(data_config, domain)
    out[domain] = build(domain, raw_dirs[domain], data_dir_for(data_config, domain), size, num_threads)
    logging.info('%s ready at %s: %s', domain, out[domain].data_dir, dict(out[domain].info.splits))
  if raw_splits:
    target = data_config.target
    out[f'{target}_raw'] = build_raw(target, raw_dirs[target], data_dir_for(data_config, target), raw_splits,
                                     num_threads)
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
              num_threads: int | None = None) -> _SegmentationBuilder:
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
  builder = build(domain, raw_dir, data_dir, size, num_threads, splits=splits)
  with _file_lock(os.path.join(data_dir, f'.{domain}-raw-size.lock')):
    record = {**_read_raw_sizes(data_dir, domain), **sizes}
    path = _raw_size_path(data_dir, domain)
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
      json.dump({s: list(v) for s, v in record.items()}, f, indent=2)
    os.replace(tmp, path)
  return builder


def load_builder(data_config: ml_collections.ConfigDict, name: str) -> _SegmentationBuilder:
  """The built dataset `name` ('gta5' | 'cityscapes') for reading; DatasetError if it was not built yet."""
  _, size = _configured(data_config, name)
  builder = make_builder(name, data_dir_for(data_config, name), size)
  if not _is_prepared(builder):
    raise DatasetError(f'Dataset {name!r} at {size_name(size)} is not built in {os.fspath(builder.data_dir)!r}. Run '
                       '`python main.py --config=<config> --mode=prepare` (or rtda_jax.data.builders.prepare) first.')
  return builder


def load_raw_builder(data_config: ml_collections.ConfigDict, name: str, split: str) -> _SegmentationBuilder:
  """The build of dataset `name` that holds `split` at its raw resolution (`prepare(..., raw_splits=[split])`);
  DatasetError if it was not built yet."""
  data_dir = data_dir_for(data_config, name)
  size = _read_raw_sizes(data_dir, name).get(split)
  builder = None if size is None else make_builder(name, data_dir, size)
  if builder is None or not _is_prepared(builder) or split not in builder.info.splits:
    raise DatasetError(f'The {name} {split} split is not built at its raw resolution in {data_dir!r}. Run '
                       '`python main.py --config=<config> --mode=prepare` with the same eval.protocol (or '
                       f'rtda_jax.data.builders.prepare(data_config, raw_splits=[{split!r}])) first.')
  return builder
