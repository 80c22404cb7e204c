"""Fréchet distance between two image sets (`--mode=fid`); the data-selection rules built on it are in select.py.

FD = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}) between Gaussians fitted (mean, unbiased covariance) to the
features of two image sets, in float64 NumPy as pytorch-fid's `calculate_frechet_distance` computes it: the matrix
square root of the product by `scipy.linalg.sqrtm`; if it is not finite (a singular product), again with eps = 1e-6
added to both diagonals; an imaginary part of its diagonal above 1e-3 is an error, a smaller one is dropped. Without
SciPy, the trace of the square root comes from symmetric eigen-decompositions (`trace_sqrt_product`).

Feature networks (`feature_network`):
- `fid.inception_weights=FILE` (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, or its keys converted to .npz):
  FID's Inception-v3 pool3 features (2048-d, `models.inception`), images resized to 299x299 as pytorch-fid does. The
  result is FID (comparable with pytorch-fid's on the same images). Nothing is downloaded.
- otherwise the segmentation network of the run `fid.feature_workdir` (WORKDIR[:best|last|STEP]): the global average of
  its last backbone feature map (the models' 'features' output), images resized (PIL bilinear) to `fid.image_size`.
  Every output then says "Fréchet distance on <network> features, not comparable with published FID".

Image sets (`fid.a`, `fid.b`): a folder of images (searched recursively, sorted paths) or a dataset split
'<source|target|gta5|cityscapes|...>:<split>' of the config's data (the built TFDS split, stored order). Streamed in
batches of `fid.batch_size`, at most `fid.max_images` images (0 = all); the statistics are accumulated per batch
(never every feature in memory). Runs in one process, on the mesh of `config.num_devices`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from rtda_jax import errors, files, parallel

FID_FILE = 'fid.json'
EPS = 1e-6  # pytorch-fid's diagonal offset for a singular product
IMAG_ATOL = 1e-3  # pytorch-fid's tolerance on the imaginary part of the square root's diagonal
IMAGE_EXTENSIONS = ('.bmp', '.jpg', '.jpeg', '.pgm', '.png', '.ppm', '.tif', '.tiff', '.webp')  # pytorch-fid's


# ---- Gaussian statistics and the Fréchet distance -------------------------------------------------------------------


class GaussianStats:
  """Streaming mean and unbiased covariance (float64) of feature batches [B, D], merged batch by batch (Chan et al.'s
  pairwise update: no sum of squares about zero, so no cancellation when the mean is large)."""

  def __init__(self, dim: int):
    self.count = 0
    self._mean = np.zeros(dim, np.float64)
    self._m2 = np.zeros((dim, dim), np.float64)  # sum of outer products of deviations from the mean

  def update(self, features: np.ndarray) -> None:
    x = np.asarray(features, np.float64).reshape(-1, self._mean.shape[0])  # [B, D]
    n_b = x.shape[0]
    if not n_b:
      return
    mean_b = x.mean(axis=0)
    xc = x - mean_b
    delta = mean_b - self._mean
    total = self.count + n_b
    self._m2 += xc.T @ xc + np.outer(delta, delta) * (self.count * n_b / total)
    self._mean += delta * (n_b / total)
    self.count = total

  @property
  def mean(self) -> np.ndarray:
    return self._mean.copy()

  @property
  def cov(self) -> np.ndarray:
    """The unbiased covariance [D, D] (np.cov's ddof=1); needs at least 2 samples."""
    if self.count < 2:
      raise ValueError(f'A covariance needs at least 2 images; got {self.count}.')
    return self._m2 / (self.count - 1)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], unbiased covariance [D, D]) in float64 of features [N, D], as pytorch-fid fits them."""
  x = np.asarray(features, np.float64)
  return x.mean(axis=0), np.cov(x, rowvar=False)


def _have_scipy() -> bool:
  try:
    import scipy.linalg  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def psd_sqrt(a: np.ndarray) -> np.ndarray:
  """The symmetric square root of a symmetric positive semi-definite matrix (eigh; negative rounding clipped)."""
  w, v = np.linalg.eigh((a + a.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, method: str = 'auto') -> float:
  """Tr((S1 S2)^{1/2}) of two covariances, as the FD needs it.

  'scipy' (the default when SciPy is installed): pytorch-fid's route, the trace of `scipy.linalg.sqrtm(S1 @ S2)`,
  retried with EPS on both diagonals when not finite; an imaginary diagonal part above 1e-3 is a ValueError.
  'eigh': S1 S2 is similar to the PSD matrix S1^{1/2} S2 S1^{1/2}, so the trace is the sum of the square roots of that
  matrix's eigenvalues; eigenvalues below zero by more than rounding (sqrt(-w) > 1e-3, the same bound) are an error.
  """
  if method == 'auto':
    method = 'scipy' if _have_scipy() else 'eigh'
  if method == 'scipy':
    from scipy import linalg  # pylint: disable=g-import-not-at-top
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
      logging.warning('Fréchet distance: singular product; adding %g to the diagonal of both covariances.', EPS)
      offset = np.eye(sigma1.shape[0]) * EPS
      covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
      if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAG_ATOL):
        raise ValueError(f'Fréchet distance: the square root of the covariance product has an imaginary component '
                         f'of {np.max(np.abs(covmean.imag)):.3g} (are both covariances positive semi-definite?).')
      covmean = covmean.real
    return float(np.trace(covmean))
  if method == 'eigh':
    root = psd_sqrt(sigma1)
    w = np.linalg.eigvalsh(root @ sigma2 @ root)
    if w.min(initial=0.0) < -IMAG_ATOL ** 2:
      raise ValueError(f'Fréchet distance: S1^1/2 S2 S1^1/2 has the eigenvalue {w.min():.3g} < 0 (are both '
                       'covariances positive semi-definite?).')
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())
  raise ValueError(f"Unknown matrix square root method {method!r}; choose 'auto', 'scipy' or 'eigh'.")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     method: str = 'auto') -> float:
  """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) in float64 (pytorch-fid's calculate_frechet_distance)."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f'Fréchet distance of Gaussians of different sizes: means {mu1.shape} / {mu2.shape}, '
                     f'covariances {sigma1.shape} / {sigma2.shape}.')
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2, method))


# ---- feature networks -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FeatureNetwork:
  """A network that maps images to one feature vector each.

  `prepare(images)`: a list of uint8 [h, w, 3] images (any sizes) -> float32 [B, H, W, 3] at `input_size`;
  `apply(variables, x)`: float32 [B, H, W, 3] -> [B, dim] features (jit-able).
  """
  name: str
  input_size: tuple[int, int]
  dim: int
  fid: bool  # True: FID's own Inception features (comparable with published FID)
  variables: Any
  apply: Callable[[Any, jax.Array], jax.Array]
  prepare: Callable[[Sequence[np.ndarray]], np.ndarray]

  @property
  def note(self) -> str:
    if self.fid:
      return ("FID: Fréchet distance on pytorch-fid's Inception-v3 pool3 features (2048-d, images resized to "
              '299x299 as pytorch-fid does)')
    return f'Fréchet distance on {self.name} features, not comparable with published FID'


@functools.partial(jax.jit, static_argnums=1)
def _resize_float(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  from rtda_jax.models.resize import resize_bilinear  # pylint: disable=g-import-not-at-top
  return resize_bilinear(images.astype(jnp.float32), size)


def _prepare_bilinear(size: tuple[int, int], images: Sequence[np.ndarray]) -> np.ndarray:
  """FID's resize: float bilinear (F.interpolate, align_corners=False, no antialiasing, no rounding), each group of
  equally sized images in one call. -> float32 [B, H, W, 3] in 0..255."""
  out = np.empty((len(images), *size, 3), np.float32)
  by_shape: dict[tuple[int, ...], list[int]] = {}
  for i, im in enumerate(images):
    by_shape.setdefault(im.shape, []).append(i)
  for idx in by_shape.values():
    out[idx] = np.asarray(_resize_float(np.stack([images[i] for i in idx]), size))
  return out


def _prepare_pil(size: tuple[int, int], images: Sequence[np.ndarray]) -> np.ndarray:
  """PIL bilinear (antialiased when it shrinks), as the dataset builders and loaders resize. -> float32 [B, H, W, 3]."""
  h, w = size
  out = [im if im.shape[:2] == (h, w) else np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR))
         for im in images]
  return np.stack(out).astype(np.float32)


def inception_network(weights: str) -> FeatureNetwork:
  """FID's Inception-v3 (pool3) with pytorch-fid's weights file `weights` (`fid.inception_weights`)."""
  from rtda_jax.models import inception  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(weights):
    raise errors.MissingFileError(
        f'config.fid.inception_weights={weights!r} does not exist. It names pytorch-fid\'s weights file '
        f'{inception.WEIGHTS_FILE} (the `fid_weights` release of mseitzer/pytorch-fid; nothing is downloaded), or '
        'the same keys converted with `python -m rtda_jax.models.pretrained convert IN.pth OUT.npz`; leave it unset '
        'for features of a network trained here (fid.feature_workdir).')
  module = inception.FIDInceptionV3()
  variables = inception.load_variables(weights, module)
  size = (inception.INPUT_SIZE, inception.INPUT_SIZE)
  return FeatureNetwork(name=f"pytorch-fid Inception-v3 pool3 ({os.path.basename(weights)})", input_size=size,
                        dim=inception.FEATURE_DIM, fid=True, variables=variables,
                        apply=lambda v, x: module.apply(v, x), prepare=functools.partial(_prepare_bilinear, size))


def segmentation_network(module: Any, variables: Any, name: str, input_size: Sequence[int]) -> FeatureNetwork:
  """The global average of a segmentation model's last backbone feature map ('features' [B, h, w, C] -> [B, C])."""
  size = tuple(int(s) for s in input_size)

  def apply(v, x):
    return jnp.mean(module.apply(v, x, train=False)['features'].astype(jnp.float32), axis=(1, 2))

  shape = jax.eval_shape(apply, variables, jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))
  return FeatureNetwork(name=name, input_size=size, dim=int(shape.shape[-1]), fid=False, variables=variables,
                        apply=apply, prepare=functools.partial(_prepare_pil, size))


def image_size(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """`fid.image_size` [H, W], or data.target_train_size when empty: the size a segmentation network is fed at."""
  size = tuple(int(s) for s in (config.fid.image_size or config.data.target_train_size))
  if len(size) != 2 or min(size) <= 0:
    raise errors.ConfigError(f'config.fid.image_size={size} must be [H, W] with positive sizes (or () for '
                             'data.target_train_size).')
  return size


def run_network(config: ml_collections.ConfigDict) -> FeatureNetwork:
  """The segmentation network of the run `fid.feature_workdir` (WORKDIR[:best|last|STEP]) as a feature network."""
  from rtda_jax import checkpointing, models, predict  # pylint: disable=g-import-not-at-top
  spec = config.fid.feature_workdir
  if not spec:
    raise errors.ConfigError('config.fid.feature_workdir is empty: name a trained run (e.g. runs/source_only) whose '
                             'segmentation network gives the features, or set config.fid.inception_weights.')
  try:
    variables, info = checkpointing.load_segmentation_variables(spec)
  except (FileNotFoundError, ValueError) as e:
    message = str(e).replace(f'model.init_from={spec!r}', f'config.fid.feature_workdir={spec!r}')
    raise errors.MissingFileError(f'{message} (`python main.py --config=configs/source_only.py` trains '
                                  "runs/source_only); or set config.fid.inception_weights for FID's Inception "
                                  'features.') from e
  model_config = predict.with_run_model(config, info['workdir']).model  # the run's architecture (its config.json)
  module = models.get_model(model_config)
  name = (f"{model_config.name} of {info['workdir']} ({info['kind']} step {info['step']}, global-average-pooled last "
          'backbone feature map)')
  size = image_size(config)
  try:
    return segmentation_network(module, variables, name, size)
  except ValueError as e:  # e.g. BiSeNet's multiple-of-32 input sizes
    raise errors.ConfigError(f'config.fid.image_size={size}: {e}') from e


def feature_network(config: ml_collections.ConfigDict) -> FeatureNetwork:
  """FID's Inception when `fid.inception_weights` is set, else the network of the run `fid.feature_workdir`."""
  if config.fid.inception_weights:
    return inception_network(config.fid.inception_weights)
  return run_network(config)


# ---- image sets -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageSet:
  """A parsed `fid.a` / `fid.b`: a folder of image files, or a (domain, split) of the config's data."""
  spec: str
  kind: str  # 'folder' | 'split'
  where: str  # the folder, or '<domain>:<split>'
  files: tuple[str, ...] = ()  # kind 'folder': every image file, sorted

  def describe(self) -> dict[str, str]:
    return {'spec': self.spec, 'kind': self.kind, 'where': self.where}


def list_images(folder: str) -> list[str]:
  """Every image file (pytorch-fid's extensions, any case) under `folder`, recursively, sorted by path."""
  found = []
  for root, dirs, names in os.walk(folder):
    dirs.sort()
    found.extend(os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS))
  return sorted(found)


def parse_image_set(spec: str, config: ml_collections.ConfigDict, field: str = 'fid.a') -> ImageSet:
  """A folder (if `spec` is one) or '<source|target|domain>:<split>'; a ConfigError naming `field` otherwise."""
  from rtda_jax.data import builders  # pylint: disable=g-import-not-at-top
  spec = str(spec or '')
  if os.path.isdir(spec):
    files = tuple(list_images(spec))
    if not files:
      raise errors.DataError(f'config.{field}={spec!r} holds no image ({", ".join(IMAGE_EXTENSIONS)}).')
    return ImageSet(spec, 'folder', os.path.abspath(spec), files)
  name, sep, split = spec.partition(':')
  domain = {'source': config.data.source, 'target': config.data.target}.get(name, name)
  if not sep or not split or domain not in builders.DOMAINS:
    raise errors.ConfigError(
        f'config.{field}={spec!r} is neither a folder of images nor a split: use an existing folder or '
        f"'<source|target|{'|'.join(builders.DOMAINS)}>:<split>', e.g. --config.{field}=target:val.")
  return ImageSet(spec, 'split', f'{domain}:{split}')


def _read_rgb(path: str) -> np.ndarray:
  """[H, W, 3] uint8 RGB through predict.read_image (any mode Pillow reads, 16-bit grey scaled to 8 bits)."""
  from rtda_jax import predict  # pylint: disable=g-import-not-at-top
  try:
    return predict.read_image(path)
  except (OSError, ValueError) as e:
    raise errors.DataError(f'Cannot read the image {path}: {e}. Remove it from the folder or replace it.') from e


def num_images(image_set: ImageSet, config: ml_collections.ConfigDict, max_images: int = 0) -> int:
  """How many images `iter_images` yields."""
  if image_set.kind == 'folder':
    n = len(image_set.files)
  else:
    from rtda_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    domain, split = image_set.where.split(':', 1)
    n = len(pipeline.data_source(config.data, domain, split))
  return min(n, max_images) if max_images > 0 else n


def iter_named_images(image_set: ImageSet, config: ml_collections.ConfigDict, batch_size: int,
                      max_images: int = 0) -> Iterator[tuple[list[str], list[np.ndarray]]]:
  """Batches (names, uint8 [h, w, 3] images) of the set, in order, at most `max_images` (0 = all). Names: a folder's
  files relative to it; a split's dataset names (e.g. 'leftImg8bit/train/<city>/<stem>_leftImg8bit.png')."""
  limit = num_images(image_set, config, max_images)
  if image_set.kind == 'folder':
    threads = max(1, int(config.data.num_workers))
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # Pillow decodes with the GIL released
      for start in range(0, limit, batch_size):
        files = image_set.files[start:min(start + batch_size, limit)]
        yield [os.path.relpath(p, image_set.where) for p in files], list(pool.map(_read_rgb, files))
    return
  from rtda_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  domain, split = image_set.where.split(':', 1)
  seen = 0
  for batch in pipeline.eval_loader(config.data, domain, split, batch_size):
    index = np.flatnonzero(np.asarray(batch['valid']))[: limit - seen]
    seen += len(index)
    if len(index):
      yield [str(batch['name'][i]) for i in index], [batch['image'][i] for i in index]
    if seen >= limit:
      return


def iter_images(image_set: ImageSet, config: ml_collections.ConfigDict, batch_size: int,
                max_images: int = 0) -> Iterator[list[np.ndarray]]:
  """Batches (lists) of uint8 [h, w, 3] images of the set, in order, at most `max_images` (0 = all)."""
  for _, images in iter_named_images(image_set, config, batch_size, max_images):
    yield images


# ---- features and statistics of a set -------------------------------------------------------------------------------


def iter_features(network: FeatureNetwork, batches: Iterable[Sequence[np.ndarray]], batch_size: int,
                  mesh: jax.sharding.Mesh | None = None) -> Iterator[np.ndarray]:
  """float32 [b, dim] features of each batch of images; every batch is padded to `batch_size` (one compiled program)
  and sharded over `mesh` (default: one device)."""
  mesh = mesh or parallel.make_mesh(1)
  parallel.check_batch_size(batch_size, mesh, 'fid.batch_size')
  variables = parallel.replicate(network.variables, mesh)
  apply = jax.jit(network.apply)
  for images in batches:
    for start in range(0, len(images), batch_size):
      chunk = network.prepare(images[start:start + batch_size])  # [b, H, W, 3]
      padded = np.zeros((batch_size, *chunk.shape[1:]), np.float32)
      padded[: len(chunk)] = chunk
      out = parallel.local_rows(apply(variables, parallel.shard_batch(padded, mesh)))
      yield np.asarray(out[: len(chunk)], np.float32)


def set_statistics(network: FeatureNetwork, image_set: ImageSet, config: ml_collections.ConfigDict,
                   mesh: jax.sharding.Mesh | None = None) -> GaussianStats:
  """The Gaussian of the network's features over the set, streamed with a progress bar."""
  import tqdm  # pylint: disable=g-import-not-at-top
  fid_cfg = config.fid
  total = num_images(image_set, config, int(fid_cfg.max_images))
  stats = GaussianStats(network.dim)
  with tqdm.tqdm(total=total, desc=f'features of {image_set.spec}', unit='img') as bar:
    batches = iter_images(image_set, config, int(fid_cfg.batch_size), int(fid_cfg.max_images))
    for feats in iter_features(network, batches, int(fid_cfg.batch_size), mesh):
      stats.update(feats)
      bar.update(len(feats))
  return stats


def batch_features(network: FeatureNetwork, batches: Iterable[Sequence[np.ndarray]], batch_size: int,
                   mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
  """float32 [N, dim] features of every image of the batches, in order (none: [0, dim])."""
  return np.concatenate([np.zeros((0, network.dim), np.float32),
                         *iter_features(network, batches, batch_size, mesh)])


def extract_features(network: FeatureNetwork, image_set: ImageSet, config: ml_collections.ConfigDict,
                     mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
  """Every image's features [N, dim] float32, in the set's order."""
  batches = iter_images(image_set, config, int(config.fid.batch_size), int(config.fid.max_images))
  return batch_features(network, batches, int(config.fid.batch_size), mesh)


# ---- --mode=fid -----------------------------------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """FD between the image sets `fid.a` and `fid.b` with the features of `feature_network(config)`; writes
  `<workdir>/fid.json` and prints the distance with its note."""
  if jax.process_count() > 1:
    raise errors.ConfigError('--mode=fid runs in one process; launch it without a multi-process environment.')
  sets = [parse_image_set(config.fid[f], config, f'fid.{f}') for f in ('a', 'b')]
  network = feature_network(config)  # before any data work: a missing file or run fails fast
  if any(s.kind == 'split' for s in sets):
    from rtda_jax.data import builders  # pylint: disable=g-import-not-at-top
    builders.prepare(config.data)
  mesh = parallel.make_mesh(config.num_devices)
  stats = [set_statistics(network, s, config, mesh) for s in sets]
  for s, st in zip(sets, stats):
    if st.count < 2:
      raise errors.DataError(f'{s.spec!r} gave {st.count} image(s); a Fréchet distance needs at least 2 per set.')
  distance = frechet_distance(stats[0].mean, stats[0].cov, stats[1].mean, stats[1].cov)
  result = {'fd': distance, 'note': network.note, 'network': network.name, 'fid': network.fid,
            'feature_dim': network.dim, 'input_size': list(network.input_size),
            'a': {**sets[0].describe(), 'num_images': stats[0].count},
            'b': {**sets[1].describe(), 'num_images': stats[1].count},
            'max_images': int(config.fid.max_images)}
  files.write_json(os.path.join(workdir, FID_FILE), result)
  parallel.say(f"{'FID' if network.fid else 'FD'} {sets[0].spec} ({stats[0].count} images) vs {sets[1].spec} "
               f"({stats[1].count} images): {distance:.4f}\n{network.note}.")
  return result


# ---- the data-selection rules, moved to rtda_jax/select.py (still importable from here) --------------------------

_MOVED_TO_SELECT = ('LUMINANCE_BINS', 'chi_square', 'fd_distances', 'histogram_distances', 'luminance_histograms',
                    'select_by_fd', 'select_by_histogram', 'select_random')


def __getattr__(name: str) -> Any:
  """`fid.select_by_fd` etc.: the selection rules live in rtda_jax.select (imported lazily: it imports this module)."""
  if name in _MOVED_TO_SELECT:
    from rtda_jax import select  # pylint: disable=g-import-not-at-top
    return getattr(select, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = [
    'FeatureNetwork', 'GaussianStats', 'ImageSet', 'extract_features', 'feature_network', 'frechet_distance',
    'gaussian_stats', 'inception_network', 'iter_features', 'iter_images', 'iter_named_images', 'list_images',
    'num_images', 'parse_image_set', 'psd_sqrt', 'run', 'run_network', 'segmentation_network', 'set_statistics',
    'trace_sqrt_product',
]
