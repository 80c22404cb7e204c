"""Image selection for self-training (`mbt.select`): on the tiny benchmark each rule keeps exactly k images of the
target-train split, the same ones as the rule called directly on features / images computed here from the raw files,
'all' selects nothing, and wrong settings are errors that name the field."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from rtda_jax import errors, fid, parallel, select
from rtda_jax.data import builders, synthetic
from tests.test_fid import SIZE, feature_run, reference_features  # noqa: F401  (feature_run: a fixture)
from tests.trainer_utils import override, tiny_config

NUM_TRAIN, NUM_VAL = 16, 8  # tests/trainer_utils.tiny_config's target splits
SHRINKAGE = 0.1
# A feature is the mean over 16 x 24 = 384 pixels of ReLU(BN(a 3x3x3 convolution)): computed here in one batch and by
# the selection in padded batches of 4, the two differ by float32 summation order. Sums of n terms round to about
# sqrt(n) * 2^-24 of their size (Higham & Mary 2019's probabilistic bound; the worst case n * 2^-24 needs every
# rounding in one direction): sqrt(27 + 384) * 6e-8 = 1.2e-6 of the largest feature, 4x that for the tail. (Measured:
# the distances agree to 1e-14, as the same kernels run on the same pixels.) `distance_error_bound` carries it to the
# distances.
FEATURE_RTOL = 4 * np.sqrt(27 + 384) * 2.0 ** -24


def select_config(data_root, rule, **overrides):
  config = tiny_config(data_root, 'fda', 'mbt', **{'mbt.select': rule})
  config.jax_cache_dir = 'none'  # keep the test session's compilation cache
  config.fid.image_size, config.fid.batch_size = SIZE, 4
  return override(config, overrides)


def raw_examples(config, split: str):
  """The target split's image/label pairs as listed from the raw folder (sorted by name), not the built dataset."""
  return builders.find_examples('cityscapes', synthetic.ensure_benchmark(config.data)[1])[split]


def raw_images(examples) -> list[np.ndarray]:
  return [np.asarray(Image.open(ex.image_path).convert('RGB')) for ex in examples]


def shrunk_gaussian(reference: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
  mu, cov = reference.mean(0), np.cov(reference, rowvar=False)
  dim = len(mu)
  return mu, (1 - shrinkage) * cov + shrinkage * np.trace(cov) / dim * np.eye(dim)


def mahalanobis2(pool: np.ndarray, reference: np.ndarray, shrinkage: float) -> np.ndarray:
  """The squared Mahalanobis distance restated with an explicit inverse (the module uses a Cholesky solve)."""
  mu, cov = shrunk_gaussian(reference, shrinkage)
  diff = pool - mu
  return np.einsum('nd,de,ne->n', diff, np.linalg.inv(cov), diff)


def distance_error_bound(pool: np.ndarray, reference: np.ndarray, shrinkage: float, delta: float) -> np.ndarray:
  """[N]: first-order bound on how far each squared Mahalanobis distance moves when every feature moves by at most
  `delta`. d2 = u^T P u with u = x - mu, P = S'^-1, g = P u: dd2 = 2 g.du - g^T dS' g. |du|_2 <= 2 delta sqrt(D)
  (x and mu each move by delta per coordinate); an entry of S moves by at most 2 max|r - mu| (2 delta) M / (M - 1)
  (the product rule on (r - mu)(r - mu)^T), so |dS|_2 <= D times that, and the shrinkage does not enlarge it. Doubled
  for the second-order terms (delta is ~1e-5 of the features, so they are smaller by as much)."""
  mu, cov = shrunk_gaussian(reference, shrinkage)
  g = (pool - mu) @ np.linalg.inv(cov)  # [N, D]
  m, dim = reference.shape
  ds = dim * 2 * np.abs(reference - mu).max() * 2 * delta * m / (m - 1)
  gn = np.linalg.norm(g, axis=1)
  return 2 * (2 * gn * 2 * delta * np.sqrt(dim) + gn ** 2 * ds)


def test_fd_distances_match_an_explicit_inverse():
  # The Cholesky solve against inv(S'): both backward stable; with S' of condition <= 1 + 0.9 D / 0.1 = 55 (D = 6:
  # the shrinkage bounds its eigenvalues below by 0.1 tr(S) / D) the distances agree to ~cond * eps = 1e-14 of
  # their size; rtol 1e-10 leaves four orders of magnitude.
  rng = np.random.default_rng(0)
  reference, pool = rng.normal(size=(9, 6)) @ rng.normal(size=(6, 6)), rng.normal(size=(7, 6)) * 3
  np.testing.assert_allclose(select.fd_distances(pool, reference, SHRINKAGE), mahalanobis2(pool, reference, SHRINKAGE),
                             rtol=1e-10)
  assert select.select_by_fd(pool, reference, 7).tolist() == np.argsort(mahalanobis2(pool, reference, 0.1)).tolist()


def test_the_rules_are_still_importable_from_fid():
  for name in ('select_by_fd', 'select_by_histogram', 'select_random', 'luminance_histograms', 'chi_square'):
    assert getattr(fid, name) is getattr(select, name)
  with pytest.raises(AttributeError):
    fid.no_such_rule  # pylint: disable=pointless-statement


def test_all_selects_nothing(data_root):
  assert select.select_for_self_training(select_config(data_root, 'all')) is None


def test_fd_rule_keeps_the_k_images_select_by_fd_keeps_on_features_computed_here(data_root, feature_run):
  workdir, module, variables = feature_run
  k = 6
  config = select_config(data_root, 'fd', **{'mbt.select_k': k, 'mbt.select_reference': 'target:val',
                                             'fid.feature_workdir': workdir})
  got = select.select_for_self_training(config, parallel.make_mesh(1))
  assert (got.rule, got.k, got.pool_size, len(got.names), len(set(got.names))) == ('fd', k, NUM_TRAIN, k, k)

  # Independently: the raw PNG files (the built splits store them at the generated size: the same pixels), resized
  # and fed to the tiny network here, then the rule called directly.
  train, val = raw_examples(config, 'train'), raw_examples(config, 'val')
  pool = reference_features([ex.image_path for ex in train], module, variables)  # [16, 8]
  reference = reference_features([ex.image_path for ex in val], module, variables)  # [8, 8]: singular unshrunk
  expected = fid.select_by_fd(pool, reference, k, shrinkage=SHRINKAGE)
  d2 = mahalanobis2(pool, reference, SHRINKAGE)
  bound = distance_error_bound(pool, reference, SHRINKAGE, FEATURE_RTOL * np.abs(np.concatenate([pool, reference])).max())
  order = np.argsort(d2)
  assert d2[order[k]] - d2[order[k - 1]] > bound[order[k]] + bound[order[k - 1]]  # rounding cannot swap k and k+1
  assert got.names == tuple(train[i].name for i in expected)  # the same images, best first
  assert np.all(np.abs(np.array(got.distances) - d2[expected]) <= bound[expected])

  record = got.record()
  assert record['selected'] == [{'name': n, 'distance': d} for n, d in zip(got.names, got.distances)]
  assert record['reference'] == {'spec': 'target:val', 'kind': 'split', 'where': 'cityscapes:val',
                                 'num_images': NUM_VAL, 'max_images': 0}
  assert record['shrinkage'] == SHRINKAGE and record['feature_dim'] == 8 and 'not comparable' in record['note']
  assert 'selected' not in got.summary() and got.summary()['file'] == select.SELECTION_FILE


def test_histogram_rule_keeps_the_k_images_closest_to_a_folder_of_night_images(data_root, tmp_path):
  k = 4
  config = select_config(data_root, 'histogram', **{'mbt.select_k': k, 'mbt.select_reference': str(tmp_path)})
  val = raw_examples(config, 'val')
  night = [np.round(im * 0.3).astype(np.uint8) for im in raw_images(val[:5])]  # a darker reference
  for i, im in enumerate(night):
    Image.fromarray(im).save(tmp_path / f'night{i}.png')
  got = select.select_for_self_training(config)
  train = raw_examples(config, 'train')
  images = raw_images(train)
  expected = fid.select_by_histogram(images, night, k)
  assert got.names == tuple(train[i].name for i in expected) and len(set(got.names)) == k
  # Integer histograms of the same pixels, the same arithmetic: the distances are exact.
  assert got.distances == tuple(select.histogram_distances(images, night)[expected].tolist())
  assert got.info['reference']['kind'] == 'folder' and got.info['reference']['num_images'] == 5
  # The rule prefers dark images: the selected ones are darker on average than the others.
  lum = np.array([np.asarray(Image.fromarray(im).convert('L')).mean() for im in images])
  assert lum[expected].mean() < np.delete(lum, expected).mean()


@pytest.mark.parametrize('k', [1, 5, NUM_TRAIN])
def test_random_rule_keeps_k_images_drawn_with_the_seed(data_root, k):
  config = select_config(data_root, 'random', **{'mbt.select_k': k, 'mbt.select_seed': 7})
  got = select.select_for_self_training(config)
  train = raw_examples(config, 'train')
  assert got.names == tuple(train[i].name for i in fid.select_random(NUM_TRAIN, k, seed=7))
  assert len(set(got.names)) == k and got.distances is None and got.info['seed'] == 7
  assert 'distance' not in got.record()['selected'][0]


def test_wrong_settings_are_errors_that_name_the_field(data_root, feature_run, tmp_path):
  with pytest.raises(errors.ConfigError, match="mbt.select='fid' is not a selection rule"):
    select.check_selection(select_config(data_root, 'fid'))
  for k in (0, -3):
    with pytest.raises(errors.ConfigError, match='mbt.select_k'):
      select.check_selection(select_config(data_root, 'random', **{'mbt.select_k': k}))
  with pytest.raises(errors.ConfigError, match='mbt.select_k=17 is more than the 16 images of target:train'):
    select.select_for_self_training(select_config(data_root, 'random', **{'mbt.select_k': 17}))
  for rule in ('fd', 'histogram'):
    with pytest.raises(errors.ConfigError, match='mbt.select_reference is empty'):
      select.check_selection(select_config(data_root, rule, **{'mbt.select_k': 2}))
    with pytest.raises(errors.ConfigError, match='mbt.select_reference'):
      select.check_selection(select_config(data_root, rule, **{'mbt.select_k': 2,
                                                               'mbt.select_reference': str(tmp_path / 'nowhere')}))
  fd = {'mbt.select_k': 2, 'mbt.select_reference': 'target:val'}
  with pytest.raises(errors.ConfigError, match='mbt.select_shrinkage'):
    select.check_selection(select_config(data_root, 'fd', **fd, **{'mbt.select_shrinkage': 1.5}))
  with pytest.raises(errors.MissingFileError, match='fid.feature_workdir'):
    select.feature_network(select_config(data_root, 'fd', **fd, **{'fid.feature_workdir': str(tmp_path / 'no_run')}))
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'one.png')  # one image: no covariance
  with pytest.raises(errors.DataError, match='mbt.select_reference'):
    select.select_for_self_training(select_config(data_root, 'fd', **{
        **fd, 'mbt.select_reference': str(tmp_path), 'fid.feature_workdir': feature_run[0]}))
