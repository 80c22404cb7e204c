"""Fréchet distance: the distance against closed forms and SciPy, FID's Inception against a PyTorch re-statement,
`--mode=fid` on folders and dataset splits, and the data-selection rules against brute force."""

from __future__ import annotations

import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from scipy import linalg, stats

from rtda_jax import app, errors, fid
from rtda_jax.models import inception, pretrained
from tests import trainer_utils  # registers the tiny segmentation model 'tiny_test_seg'

METHODS = ('scipy', 'eigh')


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
  q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
  return q * np.sign(np.diag(r))


def random_spd(dim: int, rng: np.random.Generator, low: float = 0.5, high: float = 2.0) -> np.ndarray:
  q = random_rotation(dim, rng)
  return (q * rng.uniform(low, high, dim)) @ q.T


# ---- the distance ---------------------------------------------------------------------------------------------------

# Tolerance of the distance tests: the eigen-decompositions and Schur factorisations behind both routes are backward
# stable, so with eigenvalues in [0.25, 4] (condition <= 16) and D <= 16 the trace of the square root is exact to
# about D * cond * eps = 16 * 16 * 2.2e-16 ~ 6e-14 of its size (~D). rtol 1e-9 leaves four orders of magnitude for any
# LAPACK on any x86-64 CPU, while a wrong term (a missing factor 2, a transposed product) is off by O(1).
RTOL = 1e-9


@pytest.mark.parametrize('method', METHODS)
def test_fd_of_commuting_covariances_is_the_closed_form(method):
  # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: (S1 S2)^1/2 = Q diag(sqrt(ab)) Q^T, so
  # FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
  rng = np.random.default_rng(0)
  dim = 16
  q = random_rotation(dim, rng)
  a, b = rng.uniform(0.25, 4, dim), rng.uniform(0.25, 4, dim)
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = fid.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T, method=method)
  np.testing.assert_allclose(got, expected, rtol=RTOL)


@pytest.mark.parametrize('method', METHODS)
def test_fd_of_one_dimensional_gaussians(method):
  # 1-D: FD = (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations.
  got = fid.frechet_distance(np.array([1.5]), np.array([[4.0]]), np.array([-0.5]), np.array([[0.25]]), method=method)
  np.testing.assert_allclose(got, 2.0 ** 2 + (2.0 - 0.5) ** 2, rtol=RTOL)


@pytest.mark.parametrize('method', METHODS)
def test_fd_of_general_covariances_matches_scipy_sqrtm(method):
  # Non-commuting SPD matrices: against the formula evaluated with scipy.linalg.sqrtm directly.
  rng = np.random.default_rng(1)
  dim = 12
  s1, s2 = random_spd(dim, rng, 0.25, 4), random_spd(dim, rng, 0.25, 4)
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  root = linalg.sqrtm(s1 @ s2)
  np.testing.assert_allclose(root @ root, s1 @ s2, rtol=0, atol=1e-10)  # the reference is a square root
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(root))
  np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2, method=method), expected, rtol=RTOL)


def test_psd_sqrt_matches_scipy_sqrtm():
  rng = np.random.default_rng(2)
  a = random_spd(10, rng)
  np.testing.assert_allclose(fid.psd_sqrt(a), np.real(linalg.sqrtm(a)), rtol=0, atol=1e-12)  # entries O(1)


def test_fd_of_a_gaussian_with_itself_is_zero():
  rng = np.random.default_rng(3)
  s = random_spd(8, rng)
  mu = rng.normal(size=8)
  for method in METHODS:  # tr(S) + tr(S) - 2 tr(S): cancellation leaves ~ tr(S) * 1e-15
    assert abs(fid.frechet_distance(mu, s, mu, s, method=method)) < 1e-9


def test_singular_product_is_retried_with_eps_on_the_diagonals(monkeypatch):
  # pytorch-fid: a non-finite sqrtm(S1 S2) is recomputed as sqrtm((S1 + eps I)(S2 + eps I)); the traces of S1, S2
  # stay as they are. Commuting covariances give the closed form of the retried value.
  rng = np.random.default_rng(4)
  dim = 6
  q = random_rotation(dim, rng)
  a, b = rng.uniform(0.5, 2, dim), rng.uniform(0.5, 2, dim)
  real_sqrtm, calls = linalg.sqrtm, []

  def failing_once(m, *args, **kwargs):
    calls.append(m)
    return np.full_like(m, np.inf) if len(calls) == 1 else real_sqrtm(m, *args, **kwargs)

  monkeypatch.setattr(linalg, 'sqrtm', failing_once)
  got = fid.frechet_distance(np.zeros(dim), (q * a) @ q.T, np.zeros(dim), (q * b) @ q.T, method='scipy')
  eps = fid.EPS
  expected = a.sum() + b.sum() - 2 * np.sum(np.sqrt((a + eps) * (b + eps)))
  assert len(calls) == 2
  np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_imaginary_part_of_the_square_root(monkeypatch):
  # A diagonal imaginary part above pytorch-fid's 1e-3 is an error; a smaller one is dropped.
  eye = np.eye(3)
  monkeypatch.setattr(linalg, 'sqrtm', lambda m, *a, **k: eye + 1e-2j * eye)
  with pytest.raises(ValueError, match='imaginary component'):
    fid.frechet_distance(np.zeros(3), eye, np.zeros(3), eye, method='scipy')
  monkeypatch.setattr(linalg, 'sqrtm', lambda m, *a, **k: eye + 1e-5j * eye)
  assert fid.frechet_distance(np.zeros(3), eye, np.zeros(3), eye, method='scipy') == pytest.approx(0.0, abs=1e-12)


def test_streamed_statistics_match_numpy_on_uneven_batches():
  # Features far from zero (mean 100, spread 1) would lose digits in a plain sum of squares; the pairwise update
  # keeps them: float64 with condition (|mean| / spread)^2 = 1e4 leaves errors ~ 1e4 * N * eps ~ 1e-10 of the
  # covariance, under the 1e-9 asked.
  rng = np.random.default_rng(5)
  x = 100 + rng.normal(size=(53, 7)) @ rng.normal(size=(7, 7))
  st = fid.GaussianStats(7)
  for start, stop in ((0, 1), (1, 9), (9, 30), (30, 30), (30, 53)):
    st.update(x[start:stop])
  assert st.count == 53
  np.testing.assert_allclose(st.mean, x.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(st.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)


# ---- FID's Inception-v3 ---------------------------------------------------------------------------------------------


def test_inception_parameter_count_is_torchvisions_without_fc_and_aux():
  # torchvision's inception_v3 has 27,161,264 parameters: minus fc (2048 * 1000 + 1000) and AuxLogits (conv0 768*128
  # + BN 2*128, conv1 128*768*25 + BN 2*768, fc 768*1000 + 1000) = 21,785,568 (pytorch-fid's 1008-way fc aside).
  shapes = inception.variable_shapes(inception.FIDInceptionV3())
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params'])) == 21_785_568


def _numpy_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """Random arrays under the keys and PyTorch shapes the Flax module expects (no PyTorch needed)."""
  rng = np.random.default_rng(seed)
  expected = pretrained.torch_shapes(inception.variable_shapes(inception.FIDInceptionV3()))
  return {k: rng.normal(size=s).astype(np.float32) for k, s in expected.items()}


def test_inception_weights_with_a_missing_or_unexpected_key_are_rejected():
  sd = _numpy_state_dict()
  sd['fc.weight'] = np.zeros((1008, 2048), np.float32)  # pytorch-fid's classifier: ignored
  sd['fc.bias'] = np.zeros(1008, np.float32)
  inception.load_variables(sd)  # complete: loads
  del sd['Mixed_7c.branch_pool.bn.running_var']
  sd['AuxLogits.conv0.conv.weight'] = np.zeros((128, 768, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r'(?s)missing.*Mixed_7c\.branch_pool\.bn\.running_var.*unexpected.*AuxLogits'):
    inception.load_variables(sd)


def _torch_fid_inception(torch):
  """pytorch-fid's InceptionV3(output_blocks=[3]) = torchvision's Inception3 (aux_logits=False, 1008 classes) with the
  FIDInceptionA/C/E_1/E_2 patches, re-stated from both sources: BasicConv2d = conv (no bias) + BN(eps 0.001) + ReLU."""
  nn, F = torch.nn, torch.nn.functional

  class BasicConv2d(nn.Module):

    def __init__(self, cin, cout, **kwargs):
      super().__init__()
      self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
      self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
      return F.relu(self.bn(self.conv(x)))

  def avg(x):  # the FID patch: TensorFlow's average pool ignores the padded zeros
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

  class A(nn.Module):

    def __init__(self, cin, pool_features):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
      self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
      self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
      self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
      self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
      return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                        self.branch_pool(avg(x))], 1)

  class B(nn.Module):

    def __init__(self, cin):
      super().__init__()
      self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
      self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
      self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
      return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                        F.max_pool2d(x, kernel_size=3, stride=2)], 1)

  class C(nn.Module):

    def __init__(self, cin, c7):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
      self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
      self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
      self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
      b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
      bd = self.branch7x7dbl_1(x)
      for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
        bd = layer(bd)
      return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(avg(x))], 1)

  class D(nn.Module):

    def __init__(self, cin):
      super().__init__()
      self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
      self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
      b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
      return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

  class E(nn.Module):

    def __init__(self, cin, max_pool):
      super().__init__()
      self.max_pool = max_pool  # FIDInceptionE_2 (Mixed_7c): a max pool in the pool branch
      self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
      self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
      self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
      self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
      self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
      self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
      self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
      self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
      b3 = self.branch3x3_1(x)
      b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
      bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
      bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
      pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else avg(x)
      return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
      self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
      self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
      self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
      self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
      self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
      self.Mixed_6a = B(288)
      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = C(768, 128), C(768, 160), C(768, 160), C(768, 192)
      self.Mixed_7a = D(768)
      self.Mixed_7b, self.Mixed_7c = E(1280, False), E(2048, True)
      self.fc = nn.Linear(2048, 1008)  # in the weights file, not in pool3

    def forward(self, images):  # [B, 3, H, W] in 0..1, as pytorch-fid's ToTensor gives
      x = F.interpolate(images, size=(299, 299), mode='bilinear', align_corners=False)
      x = 2 * x - 1
      x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
      x = F.max_pool2d(x, kernel_size=3, stride=2)
      x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
      x = F.max_pool2d(x, kernel_size=3, stride=2)
      for name in ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e', '7a', '7b', '7c'):
        x = getattr(self, f'Mixed_{name}')(x)
      return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)  # [B, 2048]

  return Net()


def test_inception_matches_a_pytorch_restatement_of_fids_network(tmp_path):
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  net = _torch_fid_inception(torch).eval()
  with torch.no_grad():  # random weights that keep activations O(1) through the 47 layers of the longest path
    for m in net.modules():
      if isinstance(m, torch.nn.Conv2d):
        m.weight.normal_(0, float(np.sqrt(2.0 / (m.weight[0].numel()))))
      elif isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
  path = str(tmp_path / inception.WEIGHTS_FILE)
  torch.save(net.state_dict(), path)  # float32, read back by the converter the real file goes through
  network = fid.inception_network(path)
  assert (network.dim, network.input_size, network.fid) == (2048, (299, 299), True)

  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)]
  got = np.concatenate(list(fid.iter_features(network, [images], batch_size=2)))  # the --mode=fid path
  with torch.no_grad():  # the reference in float64: its own rounding is negligible next to float32's
    net = net.double()
    ref = np.concatenate([net(torch.from_numpy(im).permute(2, 0, 1)[None].double() / 255).numpy() for im in images])
  # Float32 against float64: a conv output of K products carries a relative rounding error of about sqrt(K) * 6e-8
  # (K <= 3 * 3 * 448 = 4032: 3.8e-6); BatchNorm, ReLU and pooling do not amplify relative errors, and the longest
  # path has 47 convolutions, so errors add to about 47 * 3.8e-6 = 1.8e-4 of the output scale. 1e-3 of the largest
  # feature leaves a 5x margin; a wrong pool (count_include_pad, the E_2 max pool), padding or layout is off by O(1).
  assert got.shape == ref.shape == (2, 2048)
  scale = np.abs(ref).max()
  assert scale > 0.1 and np.abs(ref).std() > 0.1 * scale  # the features are neither dead nor constant
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3 * scale)


def test_missing_inception_weights_file_names_the_field(tmp_path):
  with pytest.raises(errors.MissingFileError, match='fid.inception_weights'):
    fid.inception_network(str(tmp_path / 'nope.pth'))


# ---- --mode=fid -----------------------------------------------------------------------------------------------------

SIZE = (16, 24)  # [H, W] the tiny feature network is fed at


def _write_images(folder, shapes, seed: int, brightness: float = 1.0) -> None:
  """Random smooth colour fields (a 3x4 grid of random colours, enlarged bilinearly: many degrees of freedom, so the
  features' covariance has full rank) under a 1-pixel checkerboard (which the resize's antialiasing filters and
  point sampling does not), as PNG and JPEG, some in a subfolder, beside a text file."""
  rng = np.random.default_rng(seed)
  for i, (h, w) in enumerate(shapes):
    grid = Image.fromarray(rng.uniform(20, 235, (3, 4, 3)).astype(np.uint8))
    field = np.asarray(grid.resize((w, h), Image.BILINEAR), np.float64)
    checker = rng.uniform(10, 40) * (((np.arange(h)[:, None] + np.arange(w)) % 2) * 2 - 1)
    im = np.clip(brightness * field + checker[..., None], 0, 255).astype(np.uint8)
    sub = folder / ('nested' if i % 3 == 0 else '')
    sub.mkdir(parents=True, exist_ok=True)
    Image.fromarray(im).save(sub / f"im{i:02d}.{'JPG' if i % 4 == 1 else 'png'}")  # any case of a known extension
  (folder / 'notes.txt').write_text('not an image')


@pytest.fixture(scope='module')
def feature_run(tmp_path_factory):
  """A 'trained' run of the tiny segmentation model: a checkpoint with `seg` and its config.json."""
  workdir = tmp_path_factory.mktemp('feature_run')
  module = trainer_utils.TinySeg()
  variables = module.init(jax.random.PRNGKey(6), jnp.zeros((1, *SIZE, 3)), train=False)  # no dead channel
  with ocp.PyTreeCheckpointer() as ckpt:
    ckpt.save(os.path.abspath(workdir / 'checkpoints' / 'last' / '5' / 'state'), {'seg': jax.device_get(variables)})
  (workdir / 'config.json').write_text(json.dumps({'model': {'name': trainer_utils.TINY_MODEL, 'num_classes': 19}}))
  return str(workdir), module, variables


def fid_config(tmp_path, **overrides):
  config = trainer_utils.tiny_config(str(tmp_path / 'data'))
  config.jax_cache_dir = 'none'  # keep the test session's compilation cache
  f = config.fid
  f.image_size, f.batch_size = SIZE, 4
  return trainer_utils.override(config, overrides)


def reference_features(files, module, variables) -> np.ndarray:
  """The tiny network's pooled features, computed directly: PIL bilinear resize, one forward pass of all images."""
  x = np.stack([np.asarray(Image.open(p).convert('RGB').resize(SIZE[::-1], Image.BILINEAR)) for p in files])
  out = module.apply(variables, jnp.asarray(x, jnp.float32), train=False)['features']
  return np.asarray(jnp.mean(out, axis=(1, 2)), np.float64)


def reference_fd(fa: np.ndarray, fb: np.ndarray) -> float:
  sa, sb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
  diff = fa.mean(0) - fb.mean(0)
  return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2 * np.trace(np.real(linalg.sqrtm(sa @ sb))))


def test_fid_mode_on_two_folders_writes_fid_json(tmp_path, feature_run):
  workdir, module, variables = feature_run
  _write_images(tmp_path / 'a', [(48, 72)] * 12, seed=0)
  _write_images(tmp_path / 'b', [(40, 56), (48, 72)] * 5, seed=1, brightness=0.6)
  config = fid_config(tmp_path, **{'fid.a': str(tmp_path / 'a'), 'fid.b': str(tmp_path / 'b'),
                                   'fid.feature_workdir': workdir})
  result = app.run(config, str(tmp_path / 'out'), mode='fid')
  with open(tmp_path / 'out' / 'fid.json') as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(result))
  assert (written['a']['num_images'], written['b']['num_images']) == (12, 10)
  assert written['input_size'] == list(SIZE) and written['feature_dim'] == 8 and written['fid'] is False
  assert written['note'] == f"Fréchet distance on {written['network']} features, not comparable with published FID"
  assert written['network'].startswith(f'{trainer_utils.TINY_MODEL} of {workdir} (last step 5')
  files_a, files_b = fid.list_images(str(tmp_path / 'a')), fid.list_images(str(tmp_path / 'b'))
  assert len(files_a) == 12 and any('nested' in p for p in files_a) and not any(p.endswith('.txt') for p in files_a)
  fa, fb = reference_features(files_a, module, variables), reference_features(files_b, module, variables)
  expected = reference_fd(fa, fb)
  # The features differ from the reference at most by float32 summation order (padded batches of 4 vs one batch): a
  # feature averages 384 ReLU'd sums of 27 products, so its relative error is below (27 + 384) * 6e-8 = 2.5e-5 and
  # typically ~1e-6; the features spread by about their own size over the images, so the FD (~0.1 here, from
  # features ~1) moves by about as much relative to it: rtol 1e-4. Resizing without antialiasing (or another
  # pooling, or a lost image) moves it by more.
  assert expected > 1e-3
  np.testing.assert_allclose(written['fd'], expected, rtol=1e-4)


def test_fid_max_images_takes_the_first_images_in_order(tmp_path, feature_run):
  workdir, module, variables = feature_run
  _write_images(tmp_path / 'a', [(48, 72)] * 13, seed=2)
  _write_images(tmp_path / 'b', [(48, 72)] * 13, seed=3, brightness=0.5)
  config = fid_config(tmp_path, **{'fid.a': str(tmp_path / 'a'), 'fid.b': str(tmp_path / 'b'),
                                   'fid.feature_workdir': workdir, 'fid.max_images': 10})  # > 8 features: full rank
  result = fid.run(config, str(tmp_path / 'out'))
  assert (result['a']['num_images'], result['b']['num_images']) == (10, 10)
  fa = reference_features(fid.list_images(str(tmp_path / 'a'))[:10], module, variables)
  fb = reference_features(fid.list_images(str(tmp_path / 'b'))[:10], module, variables)
  np.testing.assert_allclose(result['fd'], reference_fd(fa, fb), rtol=1e-4)  # tolerance as above


def test_fid_of_a_split_equals_that_of_its_image_folder(data_root, feature_run, tmp_path):
  # 'source:train' reads the built split; the folder is the generated GTA5-layout images it was built from (stored
  # at the generated size, so the same pixels): one Gaussian, FD ~ 0.
  workdir, _, _ = feature_run
  folder = os.path.join(data_root, 'synthetic', 'gta5', 'images')
  config = trainer_utils.tiny_config(data_root)
  config.jax_cache_dir = 'none'
  trainer_utils.override(config, {'fid.a': 'source:train', 'fid.b': folder, 'fid.feature_workdir': workdir,
                                  'fid.image_size': trainer_utils.TINY, 'fid.batch_size': 4})
  result = fid.run(config, str(tmp_path / 'out'))
  assert (result['a']['kind'], result['b']['kind']) == ('split', 'folder')
  assert result['a']['num_images'] == result['b']['num_images'] == 16
  network = fid.feature_network(config)
  sa, sb = (fid.set_statistics(network, fid.parse_image_set(s, config), config) for s in ('source:train', folder))
  np.testing.assert_allclose(sa.mean, sb.mean, rtol=1e-6)  # the same images: only the summation order may differ
  np.testing.assert_allclose(sa.cov, sb.cov, rtol=1e-5, atol=1e-9 * np.abs(sa.cov).max())
  # FD of a Gaussian with itself: tr S + tr S - 2 tr (S S)^1/2 cancels to the square root's accuracy (a covariance
  # of 8 features from 16 images can be near-singular, where sqrtm is accurate to ~sqrt(eps) of its scale).
  assert abs(result['fd']) < 1e-5 * np.trace(sa.cov)
  assert fid.num_images(fid.parse_image_set('target:val', config), config) == 8


def test_bad_image_sets_name_the_field(tmp_path):
  config = fid_config(tmp_path)
  with pytest.raises(errors.ConfigError, match='fid.b'):
    fid.parse_image_set('nowhere', config, 'fid.b')
  with pytest.raises(errors.ConfigError, match='fid.a'):
    fid.parse_image_set('mars:train', config, 'fid.a')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(errors.DataError, match='holds no image'):
    fid.parse_image_set(str(tmp_path / 'empty'), config, 'fid.a')
  assert fid.parse_image_set('target:val', config).where == 'cityscapes:val'


def test_missing_feature_run_names_the_field(tmp_path):
  config = fid_config(tmp_path, **{'fid.feature_workdir': str(tmp_path / 'no_run')})
  with pytest.raises(errors.MissingFileError, match='fid.feature_workdir'):
    fid.feature_network(config)


# ---- selection rules ------------------------------------------------------------------------------------------------


def test_select_by_fd_is_the_most_likely_subset_by_brute_force():
  # The rule's subset maximises the summed log-likelihood under the shrunk reference Gaussian: checked over all
  # C(8, 3) = 56 subsets with scipy's multivariate normal, and the order by each image's own log-likelihood.
  rng = np.random.default_rng(0)
  reference = rng.normal(size=(20, 3)) @ rng.normal(size=(3, 3)) + 1.0
  pool = rng.normal(size=(8, 3)) * 2
  shrinkage = 0.1
  mu, cov = reference.mean(0), np.cov(reference, rowvar=False)
  cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / 3 * np.eye(3)
  logpdf = stats.multivariate_normal(mu, cov).logpdf(pool)
  best = max(itertools.combinations(range(8), 3), key=lambda s: sum(logpdf[i] for i in s))
  got = fid.select_by_fd(pool, reference, 3, shrinkage=shrinkage)
  assert sorted(got.tolist()) == sorted(best)
  assert got.tolist() == np.argsort(-logpdf)[:3].tolist()


def test_select_by_fd_measures_distance_in_the_reference_covariance():
  # A reference spread along x (std 10) and tight along y (std 0.1): (6, 0) is typical, (0, 1) is not, although it is
  # nearer the mean in Euclidean distance.
  rng = np.random.default_rng(1)
  reference = rng.normal(size=(500, 2)) * np.array([10.0, 0.1])
  pool = np.array([[0.0, 1.0], [6.0, 0.0]])
  assert fid.select_by_fd(pool, reference, 1, shrinkage=0.0).tolist() == [1]


def test_select_by_fd_with_fewer_reference_images_than_features():
  rng = np.random.default_rng(2)
  reference, pool = rng.normal(size=(4, 10)), rng.normal(size=(6, 10))
  assert len(set(fid.select_by_fd(pool, reference, 4).tolist())) == 4  # the shrunk covariance is invertible
  with pytest.raises(ValueError, match='singular'):
    fid.select_by_fd(pool, reference, 4, shrinkage=0.0)
  with pytest.raises(ValueError, match='Cannot select'):
    fid.select_by_fd(pool, reference, 7)


def test_select_by_histogram_is_the_closest_subset_by_brute_force():
  # Brightness rule against a re-statement: numpy histograms of PIL's luminance, chi-square in a Python loop, and
  # the best of all C(8, 3) subsets by summed distance.
  rng = np.random.default_rng(3)
  images = [np.clip(rng.normal(level, 30, (12, 16, 3)), 0, 255).astype(np.uint8)
            for level in (20, 60, 90, 120, 140, 180, 220, 250)]
  reference = [np.clip(rng.normal(130, 25, (12, 16, 3)), 0, 255).astype(np.uint8) for _ in range(4)]

  def hist(im):
    h, _ = np.histogram(np.asarray(Image.fromarray(im).convert('L')), bins=32, range=(0, 256))
    return h / h.sum()

  ref = np.mean([hist(r) for r in reference], axis=0)
  dist = []
  for im in images:
    h = hist(im)
    dist.append(sum(0.5 * (a - b) ** 2 / (a + b) for a, b in zip(h, ref) if a + b > 0))
  best = min(itertools.combinations(range(8), 3), key=lambda s: sum(dist[i] for i in s))
  got = fid.select_by_histogram(images, reference, 3)
  assert sorted(got.tolist()) == sorted(best)
  assert got.tolist() == np.argsort(dist)[:3].tolist()
  assert set(best) <= {2, 3, 4, 5}  # the mid-brightness images, as the reference


def test_select_random_is_seeded_distinct_and_sorted():
  a, b = fid.select_random(100, 10, seed=3), fid.select_random(100, 10, seed=3)
  np.testing.assert_array_equal(a, b)
  assert len(set(a.tolist())) == 10 and a.tolist() == sorted(a.tolist()) and 0 <= a.min() and a.max() < 100
  assert fid.select_random(100, 10, seed=4).tolist() != a.tolist()
  assert fid.select_random(5, 5, seed=0).tolist() == [0, 1, 2, 3, 4]
  with pytest.raises(ValueError, match='Cannot select'):
    fid.select_random(5, 6, seed=0)
