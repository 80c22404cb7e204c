"""Rare-class sampling (DAFormer's RCS, Hoyer et al., CVPR 2022) of a built split, as a grain sampler.

DAFormer (tools/convert_datasets/gta.py, mmseg/datasets/uda_dataset.py) counts each class's pixels in every source
label (`sample_class_stats.json`), sums the counts over the dataset into frequencies f_c (the fraction of labelled
pixels; a class with no pixel at all is left out), draws a class with p_c = softmax((1 - f_c) / T), then draws
uniformly one of the images holding more than `min_pixels` pixels of it (`pixels > min_pixels`).

Here the counts come from one pass over the built TFDS split at the stored resolution, cached as JSON beside the
build and recomputed when the build changes. Record index i's draws come from a generator keyed by (seed, i) alone,
so restoring a grain iterator's position restores them, and processes (which read distinct global indices) draw
their own. DAFormer stops when a class has no image above `min_pixels`; we never draw such a class (and log it).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
import tqdm
from absl import logging

from rtda_jax import files, labels
from rtda_jax.data import builders, pipeline

DAFORMER_MIN_PIXELS = 3000  # DAFormer's rare_class_sampling.min_pixels ...
DAFORMER_LABEL_PIXELS = 1914 * 1052  # ... counted on GTA5 labels at their raw 1914x1052
STATS_VERSION = 1  # bump when the cached JSON's content changes meaning


def is_enabled(data_config: ml_collections.ConfigDict) -> bool:
  """`data.rcs.enabled`; False for configs written before the field existed."""
  rcs = data_config.get('rcs')
  return rcs is not None and bool(rcs.get('enabled', False))


def default_min_pixels(size: Sequence[int]) -> int:
  """DAFormer's 3000 pixels at 1914x1052 scaled to the stored (H, W), rounded: 49 at 128x256, 781 at 512x1024, 1373
  at 720x1280."""
  h, w = (int(s) for s in size)
  return int(round(DAFORMER_MIN_PIXELS * h * w / DAFORMER_LABEL_PIXELS))


def resolve_min_pixels(min_pixels: int, size: Sequence[int]) -> int:
  """`data.rcs.min_pixels`, or `default_min_pixels(size)` when it is 0."""
  if min_pixels < 0:
    raise ValueError(f'data.rcs.min_pixels={min_pixels}: use a count of pixels >= 0 (0 = DAFormer\'s 3000 at '
                     '1914x1052 scaled to the stored size).')
  return int(min_pixels) or default_min_pixels(size)


# ---- per-image counts, frequencies, probabilities -----------------------------------------------------------------


def count_label_pixels(label: np.ndarray, num_classes: int = labels.NUM_CLASSES) -> np.ndarray:
  """Pixels of each train id 0..num_classes-1 in a [H, W] label (255 and other ids are not counted) -> int64 [C]."""
  return np.bincount(np.asarray(label, np.uint8).ravel(), minlength=256)[:num_classes].astype(np.int64)


def class_pixel_counts(source: Any, num_classes: int = labels.NUM_CLASSES,
                       num_threads: int | None = None) -> tuple[np.ndarray, list[str]]:
  """One pass over a built split's labels: (int64 [N, C] pixels of each class in each record, the records' names)."""

  def count(indices: range) -> list[tuple[np.ndarray, str]]:
    out = []
    for i in indices:
      features = source[i]
      name = features['name']
      out.append((count_label_pixels(np.asarray(pipeline.decode_png(features['label'], 'L')), num_classes),
                  name.decode() if isinstance(name, bytes) else str(name)))
    return out

  n, chunk = len(source), 64
  counts, names = np.zeros((n, num_classes), np.int64), []
  with concurrent.futures.ThreadPoolExecutor(num_threads or builders.NUM_THREADS) as pool, \
      tqdm.tqdm(total=n, desc='rcs: count class pixels', unit='img', leave=False) as bar:
    for start, part in zip(range(0, n, chunk), pool.map(count, [range(s, min(s + chunk, n)) for s in
                                                                range(0, n, chunk)])):
      for k, (row, name) in enumerate(part):
        counts[start + k] = row
        names.append(name)
      bar.update(len(part))
  return counts, names


def class_frequencies(counts: np.ndarray) -> np.ndarray:
  """[N, C] per-image counts -> float64 [C]: each class's share of all labelled pixels of the split (DAFormer's f_c)."""
  totals = np.asarray(counts, np.int64).sum(axis=0)
  if totals.sum() == 0:
    raise builders.DatasetError('The split has no labelled pixel (every label is 255): rare-class sampling has '
                                'nothing to sample; set data.rcs.enabled=False or check the labels.')
  return totals / totals.sum()


def sampling_probabilities(frequencies: np.ndarray, temperature: float, drawable: np.ndarray) -> np.ndarray:
  """float64 [C]: softmax((1 - f_c) / T) over the drawable classes, 0 for the others."""
  if not temperature > 0:
    raise ValueError(f'data.rcs.temperature={temperature}: use a positive temperature (DAFormer: 0.01).')
  drawable = np.asarray(drawable, bool)
  logits = (1.0 - np.asarray(frequencies, np.float64)) / float(temperature)
  e = np.where(drawable, np.exp(logits - logits[drawable].max(initial=-np.inf)), 0.0)  # max-shifted: no overflow
  return e / e.sum()


def images_with_class(counts: np.ndarray, min_pixels: int) -> tuple[np.ndarray, ...]:
  """For each class c, the sorted record indices holding more than `min_pixels` pixels of c (int64 arrays)."""
  counts = np.asarray(counts)
  return tuple(np.flatnonzero(counts[:, c] > min_pixels).astype(np.int64) for c in range(counts.shape[1]))


@dataclasses.dataclass(frozen=True)
class RareClassStats:
  """What the sampler draws from: per-class image lists and the class probabilities (arrays of length C)."""
  counts: np.ndarray  # int64 [N, C] pixels of each class in each record
  temperature: float
  min_pixels: int
  frequencies: np.ndarray  # float64 [C], f_c
  probabilities: np.ndarray  # float64 [C], p_c (0 for classes never drawn)
  images: tuple[np.ndarray, ...]  # C int64 arrays: records holding > min_pixels of the class

  @property
  def classes(self) -> np.ndarray:
    """The class ids that can be drawn (p_c > 0)."""
    return np.flatnonzero(self.probabilities > 0)

  @property
  def never_drawn(self) -> np.ndarray:
    """Class ids with no record holding more than `min_pixels` pixels of them."""
    return np.flatnonzero(self.probabilities == 0)


def rare_class_stats(counts: np.ndarray, temperature: float, min_pixels: int) -> RareClassStats:
  """Frequencies, probabilities and image lists from per-image counts [N, C]."""
  counts = np.asarray(counts, np.int64)
  images = images_with_class(counts, min_pixels)
  drawable = np.array([len(ims) > 0 for ims in images])
  if not drawable.any():
    raise builders.DatasetError(f'No image holds more than {min_pixels} pixels of any class: rare-class sampling has '
                                'nothing to draw. Lower data.rcs.min_pixels (0 = scaled to the stored size).')
  freqs = class_frequencies(counts)
  return RareClassStats(counts=counts, temperature=float(temperature), min_pixels=int(min_pixels),
                        frequencies=freqs, probabilities=sampling_probabilities(freqs, temperature, drawable),
                        images=images)


# ---- the cache beside the build -----------------------------------------------------------------------------------


def stats_path(builder: Any, split: str) -> str:
  """Where the per-image counts of `split` are cached: beside the build's shards and source.json."""
  return os.path.join(os.fspath(builder.data_dir), f'rcs_class_pixels_{split}.json')


def build_fingerprint(builder: Any, split: str) -> str:
  """A hash of the build's source.json and the split's shard files (name, size, mtime): changes with any rebuild."""
  h = hashlib.sha1(f'{split}|{builder.info.splits[split].num_examples}\n'.encode())
  source = os.path.join(os.fspath(builder.data_dir), builders.SOURCE_FILE)
  if os.path.isfile(source):
    with open(source, 'rb') as f:
      h.update(f.read())
  for path in sorted(os.fspath(p) for p in builder.info.splits[split].filepaths):
    st = os.stat(path)
    h.update(f'{os.path.basename(path)}|{st.st_size}|{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()


def load_counts(data_config: ml_collections.ConfigDict, domain: str, split: str, source: Any | None = None,
                num_threads: int | None = None) -> np.ndarray:
  """int64 [N, C] per-image class pixels of a built split: from the cache when it matches the build, else counted
  (one pass over the labels) and cached."""
  builder = builders.load_builder(data_config, domain)
  path, fp = stats_path(builder, split), build_fingerprint(builder, split)
  if os.path.isfile(path):
    try:
      with open(path) as f:
        cached = json.load(f)
      if cached.get('version') == STATS_VERSION and cached.get('fingerprint') == fp:
        counts = np.asarray(cached['counts'], np.int64).reshape(-1, labels.NUM_CLASSES)
        if len(counts) == builder.info.splits[split].num_examples:
          return counts
    except (OSError, ValueError, KeyError, TypeError) as e:
      logging.warning('Ignoring unreadable rare-class statistics %s (%s); counting again.', path, e)
  source = pipeline.data_source(data_config, domain, split) if source is None else source
  logging.info('Counting class pixels of %s/%s (%d images) for rare-class sampling.', domain, split, len(source))
  counts, names = class_pixel_counts(source, num_threads=num_threads)
  record = {'version': STATS_VERSION, 'fingerprint': fp, 'domain': domain, 'split': split,
            'size': list(builder.size), 'classes': list(labels.CLASS_NAMES), 'names': names,
            'counts': counts.tolist()}
  files.write_json(path, record, indent=None)  # processes sharing the folder may write at once
  return counts


def split_stats(data_config: ml_collections.ConfigDict, domain: str, split: str,
                source: Any | None = None) -> RareClassStats:
  """RareClassStats of a built split under `data_config.rcs` (min_pixels 0 = scaled to the stored size); logs the
  probabilities and the classes that are never drawn."""
  rcs = data_config.rcs
  size = builders.load_builder(data_config, domain).size
  stats = rare_class_stats(load_counts(data_config, domain, split, source), float(rcs.temperature),
                           resolve_min_pixels(int(rcs.min_pixels), size))
  names = labels.CLASS_NAMES
  logging.info('Rare-class sampling of %s/%s (T=%g, more than %d pixels): %s', domain, split, stats.temperature,
               stats.min_pixels, ', '.join(f'{names[c]} f={stats.frequencies[c]:.4f} p={stats.probabilities[c]:.4f} '
                                           f'({len(stats.images[c])} images)' for c in stats.classes))
  if len(stats.never_drawn):
    logging.warning('Rare-class sampling of %s/%s never draws %s: no image holds more than %d pixels of them.',
                    domain, split, ', '.join(names[c] for c in stats.never_drawn), stats.min_pixels)
  return stats


# ---- the sampler --------------------------------------------------------------------------------------------------


class RareClassSampler:
  """A grain sampler: global record index i -> a class drawn with p_c, then a record holding it, uniformly.

  Stateless: index i's generator is Philox keyed by (seed, i), so a restored iterator position restores the draws and
  each process (grain gives it the global indices shard_index, shard_index + shard_count, ...) draws its own. The same
  generator, after the two draws, is the record's rng (the random crop's). `num_epochs` x N records, or forever.
  """

  def __init__(self, stats: RareClassStats, seed: int,
               shard_options: grain.sharding.ShardOptions = grain.sharding.NoSharding(),
               num_epochs: int | None = None):
    seed = int(seed)
    if not 0 <= seed < 2**32:
      raise ValueError(f'Rare-class sampling seed {seed} must be in [0, 2**32).')
    if num_epochs is not None and num_epochs <= 0:
      raise ValueError(f'num_epochs={num_epochs}: use a positive number of epochs, or None for forever.')
    self.stats, self.seed, self.shard_options, self.num_epochs = stats, seed, shard_options, num_epochs
    self._classes = stats.classes
    self._p = stats.probabilities[self._classes] / stats.probabilities[self._classes].sum()
    self._max_index = None if num_epochs is None else num_epochs * len(stats.counts)

  def __len__(self) -> int:
    return sys.maxsize if self._max_index is None else self._max_index

  def __repr__(self) -> str:
    # grain compares repr(sampler) with the checkpoint's on restore: say everything that changes the draws
    lists = hashlib.sha1(b''.join(ims.tobytes() + b'|' for ims in self.stats.images)).hexdigest()[:12]
    return (f'RareClassSampler(num_records={len(self.stats.counts)}, shard_options={self.shard_options!r}, '
            f'num_epochs={self.num_epochs}, seed={self.seed}, temperature={self.stats.temperature!r}, '
            f'min_pixels={self.stats.min_pixels}, images={lists})')

  def draw(self, index: int) -> tuple[int, int, np.random.Generator]:
    """(class, record index, the generator after both draws) for global index `index`."""
    rng = np.random.Generator(np.random.Philox(key=(self.seed << 64) | int(index)))
    c = int(self._classes[rng.choice(len(self._classes), p=self._p)])
    images = self.stats.images[c]
    return c, int(images[rng.integers(len(images))]), rng

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    if index < 0 or (self._max_index is not None and index >= self._max_index):
      raise IndexError(f'Record index {index} is out of bounds [0, {len(self)}).')
    _, record_key, rng = self.draw(index)
    return grain.RecordMetadata(index=index, record_key=record_key, rng=rng)


def train_sampler(data_config: ml_collections.ConfigDict, domain: str, split: str, source: Any, seed: int,
                  shard_options: grain.sharding.ShardOptions, num_epochs: int | None = None) -> RareClassSampler:
  """The rare-class sampler of a built split under `data_config.rcs` (for pipeline.train_loader)."""
  return RareClassSampler(split_stats(data_config, domain, split, source), seed, shard_options, num_epochs)
