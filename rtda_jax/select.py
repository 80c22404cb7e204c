"""Which target-train images get pseudo-labels (`mbt.select` of `--mode=pseudolabel`), and the selection rules.

The rules rank a pool of images against a reference set and keep the best `k`:
- 'fd' (`select_by_fd`): the squared Mahalanobis distance of each image's features to the Gaussian that the Fréchet
  distance fits to the reference set's features (mean, unbiased covariance, shrunk towards its mean eigenvalue by
  `mbt.select_shrinkage`); ascending. Features from the network of `--mode=fid` (`fid.feature_network`:
  `fid.inception_weights`, else the run `fid.feature_workdir`).
- 'histogram' (`select_by_histogram`): chi-square distance of each image's luminance histogram to the reference's mean
  histogram; ascending (the brightness rule).
- 'random' (`select_random`): k images drawn uniformly with `mbt.select_seed`.
- 'all' (the default): no selection; every image is pseudo-labelled, as before this step existed.

For self-training (`select_for_self_training`): the pool is the target split `mbt.split` (stored order, every image),
the reference `mbt.select_reference` (a folder of images or '<source|target|domain>:<split>', the syntax of fid.a;
at most `fid.max_images` of its images, in order), both read as `--mode=fid` reads image sets. Only the selected images
enter the pseudo-labelled folder; the rule, k and each selected image (with its distance) go to selection.json.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image

from rtda_jax import errors, fid

SELECT_RULES = ('all', 'fd', 'histogram', 'random')
SELECTION_FILE = 'selection.json'
LUMINANCE_BINS = 32
_NEEDS_REFERENCE = ('fd', 'histogram')


# ---- the rules ------------------------------------------------------------------------------------------------------


def _check_k(n: int, k: int) -> None:
  if not 0 <= k <= n:
    raise ValueError(f'Cannot select {k} of {n} images; choose 0 <= k <= {n}.')


def fd_distances(features_pool: np.ndarray, reference: np.ndarray, shrinkage: float = 0.1) -> np.ndarray:
  """float64 [N]: squared Mahalanobis distance (x - mu)^T S'^{-1} (x - mu) of each pool image's features [N, D] under
  the reference features' [M, D] Gaussian N(mu, S) (mean, unbiased covariance) with S shrunk towards its mean
  eigenvalue, S' = (1 - shrinkage) S + shrinkage tr(S)/D I (with M <= D images, S alone is singular)."""
  pool = np.asarray(features_pool, np.float64)
  ref = np.asarray(reference, np.float64)
  if pool.ndim != 2 or ref.ndim != 2 or pool.shape[1] != ref.shape[1]:
    raise ValueError(f'Features of the pool {pool.shape} and the reference {ref.shape} must be [N, D] and [M, D].')
  if ref.shape[0] < 2:
    raise ValueError(f'The reference set needs at least 2 images; got {ref.shape[0]}.')
  if not 0 <= shrinkage <= 1:
    raise ValueError(f'shrinkage={shrinkage} must be in [0, 1].')
  mu, cov = fid.gaussian_stats(ref)
  cov = np.atleast_2d(cov)
  dim = cov.shape[0]
  cov = (1 - shrinkage) * cov + shrinkage * (np.trace(cov) / dim) * np.eye(dim)
  try:
    chol = np.linalg.cholesky(cov)  # cov = L L^T; |L^-1 (x - mu)|^2 is the squared Mahalanobis distance
  except np.linalg.LinAlgError as e:
    raise ValueError(f'The reference covariance is singular ({len(ref)} images, {dim} features); use '
                     'shrinkage > 0.') from e
  z = np.linalg.solve(chol, (pool - mu).T)  # [D, N]
  return np.einsum('dn,dn->n', z, z)


def select_by_fd(features_pool: np.ndarray, reference: np.ndarray, k: int, shrinkage: float = 0.1) -> np.ndarray:
  """Indices of the `k` pool images most likely under the reference Gaussian, best first.

  Rule: rank the pool images by `fd_distances` (squared Mahalanobis distance under the shrunk reference Gaussian),
  ascending (ties: lower index first). The chosen set is the k-subset with the highest log-likelihood under
  N(mu, S'). Why this rule and not a greedy minimisation of the selected subset's FD: it is exact, order-free and
  costs one D x D factorisation plus N D^2, whereas every greedy step evaluates a matrix square root per candidate
  (N K^4 / 4 work at best), minutes to hours for K in the hundreds on a CPU; and for self-training the images typical
  of the reference are the ones to trust, which the likelihood ranks first (a subset matching the reference's spread
  would also take its outliers).
  """
  d2 = fd_distances(features_pool, reference, shrinkage)
  _check_k(len(d2), k)
  return np.argsort(d2, kind='stable')[:k]


def luminance_histograms(images: Iterable[np.ndarray], bins: int = LUMINANCE_BINS) -> np.ndarray:
  """[N, bins] normalised histograms of each uint8 [H, W, 3] image's luminance (PIL's 'L': ITU-R 601-2 luma,
  L = 0.299 R + 0.587 G + 0.114 B), over 0..255 in `bins` equal bins."""
  if 256 % bins:
    raise ValueError(f'bins={bins} must divide 256.')
  hists = []
  for im in images:
    lum = np.asarray(Image.fromarray(np.asarray(im, np.uint8)).convert('L'))
    h = np.bincount(lum.reshape(-1) // (256 // bins), minlength=bins).astype(np.float64)
    hists.append(h / h.sum())
  return np.stack(hists) if hists else np.zeros((0, bins))


def chi_square(h: np.ndarray, ref: np.ndarray) -> np.ndarray:
  """Chi-square distance 1/2 sum_b (h_b - r_b)^2 / (h_b + r_b) (empty bins of both skipped) of rows h [N, bins] to
  one histogram ref [bins]."""
  num = (h - ref) ** 2
  den = h + ref
  return 0.5 * np.sum(np.divide(num, den, out=np.zeros_like(num), where=den > 0), axis=-1)


def histogram_distances(images: Iterable[np.ndarray], reference_images: Iterable[np.ndarray],
                        bins: int = LUMINANCE_BINS) -> np.ndarray:
  """float64 [N]: chi-square distance of each image's luminance histogram to the reference images' mean one."""
  hists = luminance_histograms(images, bins)
  reference = luminance_histograms(reference_images, bins)
  if not len(reference):
    raise ValueError('The reference set of the histogram rule is empty.')
  return chi_square(hists, reference.mean(axis=0))


def select_by_histogram(images: Iterable[np.ndarray], reference_images: Iterable[np.ndarray], k: int,
                        bins: int = LUMINANCE_BINS) -> np.ndarray:
  """Indices of the `k` images whose luminance histogram is closest (chi-square) to the mean luminance histogram of
  the reference images, best first (ties: lower index first): the brightness rule."""
  d = histogram_distances(images, reference_images, bins)
  _check_k(len(d), k)
  return np.argsort(d, kind='stable')[:k]


def select_random(n: int, k: int, seed: int) -> np.ndarray:
  """`k` distinct indices of 0..n-1 drawn uniformly (np.random.default_rng(seed)), ascending."""
  _check_k(n, k)
  return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


# ---- the selection step of --mode=pseudolabel -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Selection:
  """The images `mbt.select` keeps: their dataset names, best first ('random': in stored order), and each one's
  distance ('fd': squared Mahalanobis; 'histogram': chi-square; 'random': none)."""
  rule: str
  k: int
  pool_size: int
  names: tuple[str, ...]
  distances: tuple[float, ...] | None
  info: dict[str, Any]  # pool, reference, and the rule's parameters / network

  def summary(self) -> dict[str, Any]:
    """For pseudolabels.json: everything but the per-image list (which is in selection.json)."""
    return {'rule': self.rule, 'k': self.k, 'pool_size': self.pool_size, **self.info, 'file': SELECTION_FILE}

  def record(self) -> dict[str, Any]:
    """selection.json: the summary and every selected image, best first."""
    images = [{'name': n} if self.distances is None else {'name': n, 'distance': d}
              for n, d in zip(self.names, self.distances or [None] * len(self.names))]
    return {**self.summary(), 'selected': images}


def pool_set(config: ml_collections.ConfigDict) -> fid.ImageSet:
  """The target split `mbt.split` that pseudo-labels are made for, as an image set."""
  return fid.parse_image_set(f'target:{config.mbt.split}', config, 'mbt.split')


def check_selection(config: ml_collections.ConfigDict) -> str:
  """config.mbt.select and the fields its rule needs, checked before any model or data work; returns the rule."""
  mbt = config.mbt
  rule = mbt.get('select', 'all')
  if rule not in SELECT_RULES:
    raise errors.ConfigError(f'config.mbt.select={rule!r} is not a selection rule; use one of '
                             f'{", ".join(SELECT_RULES)} (e.g. --config.mbt.select=fd --config.mbt.select_k=500).')
  if rule == 'all':
    return rule
  k = mbt.select_k
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
    raise errors.ConfigError(f'config.mbt.select_k={k!r}: --config.mbt.select={rule} keeps that many target-train '
                             'images; set a positive number, e.g. --config.mbt.select_k=500.')
  if rule in _NEEDS_REFERENCE:
    if not mbt.select_reference:
      raise errors.ConfigError(f'config.mbt.select_reference is empty: the {rule!r} rule ranks images by their '
                               "closeness to a reference set; name a folder of images or a split such as 'target:val'.")
    fid.parse_image_set(mbt.select_reference, config, 'mbt.select_reference')
  if rule == 'fd' and not 0 <= mbt.select_shrinkage <= 1:
    raise errors.ConfigError(f'config.mbt.select_shrinkage={mbt.select_shrinkage} must be in [0, 1] (0.1 is the '
                             'default; > 0 when the reference has fewer images than features).')
  if jax.process_count() > 1:
    raise errors.ConfigError(f'config.mbt.select={rule!r} runs in one process; launch --mode=pseudolabel without a '
                             'multi-process environment, or use --config.mbt.select=all.')
  return rule


def feature_network(config: ml_collections.ConfigDict) -> fid.FeatureNetwork | None:
  """The network of `--mode=fid` when the rule needs features ('fd'), else None; loaded early, so a missing run or
  weights file fails before any data work."""
  return fid.feature_network(config) if check_selection(config) == 'fd' else None


def _named(batches: Iterable[tuple[list[str], list[np.ndarray]]], names: list[str]) -> Iterator[list[np.ndarray]]:
  """The image batches of `fid.iter_named_images`, appending their names to `names` as they pass."""
  for batch_names, images in batches:
    names.extend(batch_names)
    yield images


def _flat(batches: Iterable[Sequence[np.ndarray]]) -> Iterator[np.ndarray]:
  for images in batches:
    yield from images


def _counted(batches: Iterable[Sequence[np.ndarray]], bar: Any) -> Iterator[Sequence[np.ndarray]]:
  """The batches, advancing the progress bar by each one's size."""
  for images in batches:
    bar.update(len(images))
    yield images


def select_for_self_training(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None,
                             network: fid.FeatureNetwork | None = None) -> Selection | None:
  """The images of the target split `mbt.split` that `mbt.select` keeps; None for 'all' (every image). The built
  datasets must exist (builders.prepare). `network`: `feature_network(config)`, when already loaded."""
  import tqdm  # pylint: disable=g-import-not-at-top
  mbt = config.mbt
  rule = check_selection(config)
  if rule == 'all':
    return None
  pool = pool_set(config)
  n = fid.num_images(pool, config)
  if mbt.select_k > n:
    raise errors.ConfigError(f'config.mbt.select_k={mbt.select_k} is more than the {n} images of {pool.spec} '
                             f'(the pool mbt.select chooses from); choose 1..{n}.')
  batch_size = int(config.fid.batch_size)
  names: list[str] = []
  pool_batches = _named(fid.iter_named_images(pool, config, batch_size), names)
  info: dict[str, Any] = {'pool': pool.describe()}
  distances = None
  if rule in _NEEDS_REFERENCE:
    reference = fid.parse_image_set(mbt.select_reference, config, 'mbt.select_reference')
    num_ref = fid.num_images(reference, config, int(config.fid.max_images))
    info['reference'] = {**reference.describe(), 'num_images': num_ref, 'max_images': int(config.fid.max_images)}
    ref_batches = fid.iter_images(reference, config, batch_size, int(config.fid.max_images))
    with tqdm.tqdm(total=num_ref + n, desc=f'selection ({rule})', unit='img') as bar:
      ref_batches, pool_batches = _counted(ref_batches, bar), _counted(pool_batches, bar)
      try:
        if rule == 'fd':
          network = network or fid.feature_network(config)
          ref_feats = fid.batch_features(network, ref_batches, batch_size, mesh)  # [M, D]
          distances = fd_distances(fid.batch_features(network, pool_batches, batch_size, mesh), ref_feats,
                                   float(mbt.select_shrinkage))  # [N]
          info.update(shrinkage=float(mbt.select_shrinkage), network=network.name, note=network.note,
                      feature_dim=network.dim, input_size=list(network.input_size),
                      distance='squared Mahalanobis distance to the reference Gaussian (shrunk covariance)')
        else:
          distances = histogram_distances(_flat(pool_batches), _flat(ref_batches))
          info.update(bins=LUMINANCE_BINS,
                      distance="chi-square distance to the reference's mean luminance histogram")
      except ValueError as e:  # too few reference images for a covariance, an empty reference, ...
        if isinstance(e, errors.UserError):  # already names its field or file
          raise
        raise errors.DataError(f'config.mbt.select_reference={mbt.select_reference!r}: {e}') from e
    order = np.argsort(distances, kind='stable')[:mbt.select_k]  # the ranking of select_by_fd / select_by_histogram
  else:
    for _ in pool_batches:  # the names, in stored order
      pass
    order = select_random(n, int(mbt.select_k), int(mbt.select_seed))
    info['seed'] = int(mbt.select_seed)
  if len(names) != n:
    raise errors.DataError(f'{pool.spec} yielded {len(names)} images, not the {n} its dataset lists; rebuild it.')
  return Selection(rule=rule, k=int(mbt.select_k), pool_size=n, names=tuple(names[i] for i in order),
                   distances=None if distances is None else tuple(float(distances[i]) for i in order), info=info)


__all__ = [
    'LUMINANCE_BINS', 'SELECTION_FILE', 'SELECT_RULES', 'Selection', 'check_selection', 'chi_square',
    'fd_distances', 'feature_network', 'histogram_distances', 'luminance_histograms', 'pool_set',
    'select_by_fd', 'select_by_histogram', 'select_for_self_training', 'select_random',
]
