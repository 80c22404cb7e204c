"""grain pipelines over the built datasets: read, decode (Pillow), resize/crop to a fixed shape, shard, batch.

- `train_loader`: shuffled, repeated, fixed-shape batches: this JAX process's rows of each global batch, which are
  the same for any number of processes (`ProcessSliceSampler`); its iterator's state can be saved
  (`get_state`, a JSON-able dict) and restored (`set_state`; or with orbax through grain's own handler,
  `orbax_save_args` / `orbax_restore_args`), after which it yields exactly the batches it would have yielded.
- `eval_loader`: every image once, in the stored order, at the stored resolution (or from the split built at its raw
  resolution, the image and the label each resized to a size of the evaluation protocol's); the last batch is padded
  with zero images, all-255 labels and `valid=False`; each process reads a disjoint block of the split (together:
  all of it) and every process gets the same number of batches.

No TensorFlow: records come from the TFDS array_record data source and PNG bytes are decoded with Pillow.
"""

from __future__ import annotations

import io
import json
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
from PIL import Image

from rtda_jax import errors, labels
from rtda_jax.data import builders

DOMAINS = builders.DOMAINS
RESIZE_MODES = ('resize', 'crop')


# ---- decoding and per-example transforms (run in grain workers; must pickle) -------------------------------------


def decode_png(data: bytes, mode: str) -> Image.Image:
  """PNG bytes -> a loaded PIL image in `mode` ('RGB' or 'L')."""
  im = Image.open(io.BytesIO(data))
  im.load()
  return im if im.mode == mode else im.convert(mode)


def decode_example(features: dict[str, Any]) -> tuple[Image.Image, Image.Image]:
  """A stored record -> (RGB image, 'L' train-id label)."""
  return decode_png(features['image'], 'RGB'), decode_png(features['label'], 'L')


class DecodeResize(grain.transforms.Map):
  """Decodes and resizes the whole example to `shape` = (H, W): image bilinear, label nearest."""

  def __init__(self, shape: Sequence[int]):
    self.shape = tuple(int(s) for s in shape)

  def map(self, features: dict[str, Any]) -> dict[str, np.ndarray]:
    image, label = decode_example(features)
    h, w = self.shape
    if image.size != (w, h):
      image = image.resize((w, h), Image.BILINEAR)
    if label.size != (w, h):
      label = label.resize((w, h), Image.NEAREST)
    return {'image': np.asarray(image), 'label': np.asarray(label)}  # [H, W, 3], [H, W] uint8


def random_crop(image: np.ndarray, label: np.ndarray, shape: Sequence[int],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """A random (H, W) crop of [h, w, 3] / [h, w]; a smaller example is padded (image 0, label 255) first."""
  th, tw = shape
  h, w = label.shape
  if h < th or w < tw:
    ph, pw = max(h, th), max(w, tw)
    padded_image = np.zeros((ph, pw, 3), np.uint8)
    padded_label = np.full((ph, pw), labels.IGNORE, np.uint8)
    padded_image[:h, :w], padded_label[:h, :w] = image, label
    image, label, h, w = padded_image, padded_label, ph, pw
  y = int(rng.integers(0, h - th + 1))
  x = int(rng.integers(0, w - tw + 1))
  return image[y:y + th, x:x + tw], label[y:y + th, x:x + tw]


class DecodeRandomCrop(grain.transforms.RandomMap):
  """Decodes and takes a random crop of `shape` = (H, W); the position comes from grain's per-record RNG."""

  def __init__(self, shape: Sequence[int]):
    self.shape = tuple(int(s) for s in shape)

  def random_map(self, features: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image, label = decode_example(features)
    image, label = random_crop(np.asarray(image), np.asarray(label), self.shape, rng)
    return {'image': np.ascontiguousarray(image), 'label': np.ascontiguousarray(label)}  # [H, W, 3], [H, W]


# ---- the train loader ---------------------------------------------------------------------------------------------


def data_source(data_config: ml_collections.ConfigDict, domain: str, split: str) -> Any:
  """The TFDS array_record data source of a built split (random access, picklable, TensorFlow-free)."""
  if domain not in DOMAINS:
    raise errors.ConfigError(f'Unknown domain {domain!r}; choose one of {DOMAINS} (data.source / data.target).')
  builder = builders.load_builder(data_config, domain)
  if split not in builder.info.splits:
    raise builders.DatasetError(f'Dataset {domain!r} in {builder.data_dir} has no split {split!r}; it has '
                                f'{sorted(builder.info.splits)}.')
  return builder.as_data_source(split)


def per_process_batch_size(global_batch_size: int) -> int:
  """global_batch_size // jax.process_count(); ConfigError unless it divides evenly."""
  import jax  # pylint: disable=g-import-not-at-top
  count = jax.process_count()
  if global_batch_size <= 0 or global_batch_size % count:
    raise errors.ConfigError(f'The global batch size {global_batch_size} must be a positive multiple of the number of '
                             f'JAX processes ({count}); change train.batch_size.')
  return global_batch_size // count


def _ensure_flags_parsed() -> None:
  """grain's worker processes read absl flags; outside an absl app (tests, notebooks) use their defaults."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class ProcessSliceSampler:
  """This process's rows of every global batch of a global sampler: local position l -> global position
  (l // b) * B + p * b + l % b, with B the global batch, b = B / P its rows per process and p this process's index.

  Every process draws the global order (same seed, same record keys, the same per-record rng: the crops) and reads
  only its slice of each global batch, so the global batches are those of one process with the whole batch,
  whatever the number of processes, and each record of a batch is read by exactly one process. A finite sampler is
  cut to whole global batches, as one process's `Batch(drop_remainder=True)` would cut it.
  """

  def __init__(self, sampler: Any, global_batch_size: int, process_count: int, process_index: int):
    if global_batch_size % process_count or not 0 <= process_index < process_count:
      raise ValueError(f'Global batch {global_batch_size} over {process_count} processes (index {process_index}).')
    self._sampler, self._global = sampler, int(global_batch_size)
    self._count, self._index = int(process_count), int(process_index)
    self._rows = self._global // self._count
    total = len(sampler)
    self._len = total if total == sys.maxsize else total // self._global * self._rows

  def __len__(self) -> int:
    return self._len

  def __repr__(self) -> str:
    # grain compares repr(sampler) with the checkpoint's on restore: say everything that changes the draws
    return (f'ProcessSliceSampler({self._sampler!r}, global_batch_size={self._global}, '
            f'process_count={self._count}, process_index={self._index})')

  def global_index(self, local: int) -> int:
    """The global sampler position of this process's position `local`."""
    return local // self._rows * self._global + self._index * self._rows + local % self._rows

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    if index < 0 or index >= self._len:
      raise IndexError(f'Record index {index} is out of bounds [0, {self._len}).')
    meta = self._sampler[self.global_index(index)]
    return grain.RecordMetadata(index=index, record_key=meta.record_key, rng=meta.rng)


def train_loader(data_config: ml_collections.ConfigDict, domain: str, split: str, global_batch_size: int,
                 seed: int, shape: Sequence[int], num_epochs: int | None = None,
                 num_workers: int | None = None, rare_class_sampling: bool = False) -> grain.DataLoaderIterator:
  """Shuffled fixed-shape batches: this process's rows of each global batch, forever when num_epochs is None.

  Yields {'image': uint8 [B, H, W, 3], 'label': uint8 [B, H, W]} with B = global_batch_size // process_count and
  (H, W) = shape; `data_config.resize_mode` picks whole-image resize or a random crop. `seed` in [0, 2**32) fixes the
  order and the crops, the same for any number of processes (ProcessSliceSampler); `num_workers` (default
  data_config.num_workers) worker processes decode, 0 = in-process. `rare_class_sampling` (pass it for a labelled
  domain) draws the records by DAFormer's rare-class sampling (rcs.RareClassSampler) instead of shuffled epochs when
  `data_config.rcs.enabled`; an epoch is then N draws.
  """
  import jax  # pylint: disable=g-import-not-at-top
  batch = per_process_batch_size(global_batch_size)
  if data_config.resize_mode == 'resize':
    op = DecodeResize(shape)
  elif data_config.resize_mode == 'crop':
    op = DecodeRandomCrop(shape)
  else:
    raise errors.ConfigError(f'Unknown data.resize_mode {data_config.resize_mode!r}; choose one of {RESIZE_MODES}.')
  source = data_source(data_config, domain, split)
  _ensure_flags_parsed()
  # The sampler of one process with the whole batch (ShardByJaxProcess is the whole dataset there: keeping it keeps
  # the sampler's repr, so checkpoints written before ProcessSliceSampler resume); several processes slice it.
  count = jax.process_count()
  whole = (grain.sharding.ShardByJaxProcess(drop_remainder=True) if count == 1 else
           grain.sharding.ShardOptions(shard_index=0, shard_count=1, drop_remainder=True))
  from rtda_jax.data import rcs  # pylint: disable=g-import-not-at-top  (rcs reads splits through this module)
  if rare_class_sampling and rcs.is_enabled(data_config):
    sampler = rcs.train_sampler(data_config, domain, split, source, int(seed), whole, num_epochs)
  else:
    sampler = grain.samplers.IndexSampler(num_records=len(source), shard_options=whole, shuffle=True,
                                          num_epochs=num_epochs, seed=int(seed))
  if count > 1:
    sampler = ProcessSliceSampler(sampler, global_batch_size, count, jax.process_index())
  loader = grain.DataLoader(
      data_source=source, sampler=sampler, shard_options=whole,
      operations=[op, grain.transforms.Batch(batch_size=batch, drop_remainder=True)],
      worker_count=data_config.num_workers if num_workers is None else num_workers,
      worker_buffer_size=max(1, int(data_config.prefetch)))
  return iter(loader)


def get_state(iterator: grain.DataLoaderIterator) -> dict[str, Any]:
  """The iterator's position as a JSON-serialisable dict (e.g. for orbax's JsonSave); restore it with `set_state`."""
  return json.loads(iterator.get_state())


def set_state(iterator: grain.DataLoaderIterator, state: dict[str, Any] | bytes | str) -> None:
  """Moves a freshly built iterator (same arguments as the saved one) to a saved position: the batches it yields
  next are exactly those the saved iterator would have yielded."""
  if isinstance(state, dict):
    state = json.dumps(state)
  iterator.set_state(state.encode() if isinstance(state, str) else state)


def orbax_save_args(iterator: grain.DataLoaderIterator) -> Any:
  """Orbax CheckpointArgs that save the iterator (grain's handler: one JSON file per process)."""
  return grain.checkpoint.CheckpointSave(iterator)


def orbax_restore_args(iterator: grain.DataLoaderIterator) -> Any:
  """Orbax CheckpointArgs that restore a saved state into `iterator` (which the restore returns)."""
  return grain.checkpoint.CheckpointRestore(iterator)


# ---- the evaluation loader ----------------------------------------------------------------------------------------


_PADDING: dict[str, Any] = {'padding': True}  # not None: grain treats None as a filtered-out element


class _PaddedSource:
  """This process's block of record indices, padded with -1 to whole batches; a padding record is _PADDING."""

  def __init__(self, source: Any, indices: Sequence[int]):
    self._source, self._indices = source, list(indices)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int) -> dict[str, Any]:
    k = self._indices[i]
    return _PADDING if k < 0 else self._source[k]


EVAL_RESAMPLE = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}  # PIL filters for the eval image resize


def _size_or(size: Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
  return default if size is None else tuple(int(s) for s in size)


class DecodeEval(grain.transforms.Map):
  """Decodes at the stored size (H, W), then resizes the image to `image_size` (PIL `resample`) and the label to
  `label_size` (nearest), each where given; a padding record becomes a zero image, an all-255 label, valid=False."""

  def __init__(self, size: Sequence[int], where: str, image_size: Sequence[int] | None = None,
               label_size: Sequence[int] | None = None, resample: str = 'bilinear'):
    if resample not in EVAL_RESAMPLE:
      raise ValueError(f'Unknown evaluation image resize {resample!r}; choose one of {sorted(EVAL_RESAMPLE)}.')
    self.size, self.where = tuple(int(s) for s in size), where
    self.image_size, self.label_size = _size_or(image_size, self.size), _size_or(label_size, self.size)
    self.resample = resample

  def map(self, features: dict[str, Any]) -> dict[str, Any]:
    h, w = self.size
    if 'padding' in features:
      return {'image': np.zeros((*self.image_size, 3), np.uint8),
              'label': np.full(self.label_size, labels.IGNORE, np.uint8), 'valid': np.bool_(False), 'name': ''}
    image, label = decode_example(features)
    name = features['name'].decode() if isinstance(features['name'], bytes) else str(features['name'])
    if image.size != (w, h) or label.size != (w, h):
      raise builders.DatasetError(
          f'Example {name!r} of {self.where} is {image.size[0]}x{image.size[1]} (label {label.size[0]}x'
          f'{label.size[1]}) but the split is stored at {w}x{h} (WxH); evaluation needs one size. Rebuild the '
          'dataset (delete its folder and run --mode=prepare).')
    if self.image_size != self.size:
      image = image.resize(self.image_size[::-1], EVAL_RESAMPLE[self.resample])
    if self.label_size != self.size:
      label = label.resize(self.label_size[::-1], Image.NEAREST)
    return {'image': np.asarray(image), 'label': np.asarray(label), 'valid': np.bool_(True), 'name': name}


class EvalLoader:
  """Iterable over this process's evaluation batches; iterate it again for another pass.

  Process p of P reads the p-th of P consecutive blocks of the split (disjoint; together every image once), in
  batches of B = `batch_size` (its rows of a global batch of B * P: evaluate.py passes data.eval_batch_size / P).
  Each batch: image uint8 [B, h, w, 3], label uint8 [B, H, W], valid bool [B], name str [B] ('' for padding), with
  (h, w) = `image_size` and (H, W) = `label_size` (default: the size the split is read at, `size`). `raw` reads the
  split built at its raw resolution (builders.prepare(..., raw_splits=[split])) instead of the stored one.
  """

  def __init__(self, data_config: ml_collections.ConfigDict, domain: str, split: str, batch_size: int,
               num_threads: int | None = None, *, raw: bool = False, image_size: Sequence[int] | None = None,
               label_size: Sequence[int] | None = None, image_resample: str = 'bilinear'):
    import jax  # pylint: disable=g-import-not-at-top
    if batch_size <= 0:
      raise ValueError(f'Evaluation batch size must be positive, got {batch_size}.')
    if raw:
      builder = builders.load_raw_builder(data_config, domain, split)
      source = builder.as_data_source(split)
    else:
      source = data_source(data_config, domain, split)
      builder = builders.load_builder(data_config, domain)
    self.size = builder.size  # (H, W) of every image of the split as read
    self.image_size, self.label_size = _size_or(image_size, self.size), _size_or(label_size, self.size)
    self.batch_size = batch_size
    self.num_examples = len(source)  # real examples over all processes
    count, index = jax.process_count(), jax.process_index()
    per_process = math.ceil(self.num_examples / count)
    self.num_batches = math.ceil(per_process / batch_size)  # per process; equal on every process
    start = index * per_process
    block = list(range(start, min(start + per_process, self.num_examples)))
    block += [-1] * (self.num_batches * batch_size - len(block))
    threads = num_threads if num_threads is not None else max(1, int(data_config.num_workers))
    where = f'{domain}/{split} in {builder.data_dir}'
    self._dataset = (grain.MapDataset.source(_PaddedSource(source, block))
                     .map(DecodeEval(self.size, where, self.image_size, self.label_size, image_resample))
                     .batch(batch_size)
                     .to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)))

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return iter(self._dataset)


def eval_loader(data_config: ml_collections.ConfigDict, domain: str, split: str, batch_size: int,
                num_threads: int | None = None, *, raw: bool = False, image_size: Sequence[int] | None = None,
                label_size: Sequence[int] | None = None, image_resample: str = 'bilinear') -> EvalLoader:
  """Every image of `split` exactly once over all processes, in the stored order, padded to whole batches (the
  sizes as in EvalLoader)."""
  return EvalLoader(data_config, domain, split, batch_size, num_threads, raw=raw, image_size=image_size,
                    label_size=label_size, image_resample=image_resample)
