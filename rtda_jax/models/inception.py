"""FID's Inception-v3 (pytorch-fid's `fid_inception_v3`) in Flax linen, NHWC, for the 2048-d pool3 features.

The network is torchvision's `Inception3` up to the final average pool, with pytorch-fid's patches that make it the
TensorFlow graph FID was defined with (`pt_inception-2015-12-05-6726825d.pth`):
- FIDInceptionA (Mixed_5b/c/d), FIDInceptionC (Mixed_6b-e), FIDInceptionE_1 (Mixed_7b): the 3x3 stride-1 average
  pool of the pool branch does not count the zero padding (count_include_pad=False, TensorFlow's average pool);
- FIDInceptionE_2 (Mixed_7c): that pool branch takes a 3x3 stride-1 MAX pool instead;
- BasicConv2d: conv without bias, BatchNorm (eps 1e-3, running statistics), ReLU.
Input handling of pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)`: images 0..255 RGB (pytorch-fid
feeds ToTensor's 0..1) are resized bilinearly to 299x299 (F.interpolate, align_corners=False, no antialiasing:
`resize.resize_bilinear`) and mapped to [-1, 1]. Output: pool3, the global average of Mixed_7c, [B, 2048].

Parameter paths follow the state dict's keys, so `pretrained.load_backbone` converts the file:
`Mixed_5b.branch5x5_1.conv.weight` -> params['Mixed_5b']['branch5x5_1']['conv']['kernel'] (OIHW -> HWIO),
`...bn.weight/bias` -> params [...]['bn']['scale'/'bias'], `...bn.running_mean/var` -> batch_stats [...]['mean'/'var'].
The file's 1008-class `fc` layer is ignored (pretrained.IGNORED_PREFIXES). Nothing is downloaded: the file is named.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rtda_jax.models.norm import BatchNorm
from rtda_jax.models.resize import resize_bilinear

INPUT_SIZE = 299  # pytorch-fid resizes every image to 299x299
FEATURE_DIM = 2048
WEIGHTS_FILE = 'pt_inception-2015-12-05-6726825d.pth'  # pytorch-fid's FID weights (its release `fid_weights`)
BN_EPSILON = 1e-3  # torchvision's BasicConv2d


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class BasicConv2d(nn.Module):
  """Conv (no bias, explicit PyTorch padding) + BatchNorm (running statistics, eps 1e-3) + ReLU: [B, H, W, C]."""
  features: int
  kernel: int | tuple[int, int]
  stride: int = 1
  padding: int | tuple[int, int] = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    (ph, pw), s = _pair(self.padding), self.stride
    x = nn.Conv(self.features, _pair(self.kernel), strides=(s, s), padding=((ph, ph), (pw, pw)), use_bias=False,
                name='conv')(x)
    return nn.relu(BatchNorm(epsilon=BN_EPSILON, name='bn')(x, use_running_average=True))


def avg_pool_3x3_no_pad_count(x: jax.Array) -> jax.Array:
  """F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False): the padded zeros are not averaged."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x: jax.Array, stride: int, padding: int) -> jax.Array:
  """F.max_pool2d(x, 3, stride, padding): the padding is -inf, never a value."""
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((padding, padding),) * 2)


class InceptionA(nn.Module):
  """FIDInceptionA: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool (no pad count)-1x1 -> 224 + pool_features channels."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(64, 1, name='branch1x1')(x)
    b5 = BasicConv2d(48, 1, name='branch5x5_1')(x)
    b5 = BasicConv2d(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = BasicConv2d(64, 1, name='branch3x3dbl_1')(x)
    b3 = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = BasicConv2d(self.pool_features, 1, name='branch_pool')(avg_pool_3x3_no_pad_count(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """torchvision's InceptionB (Mixed_6a, unpatched): stride-2 reduction, [B, 35, 35, 288] -> [B, 17, 17, 768]."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(384, 3, stride=2, name='branch3x3')(x)
    bd = BasicConv2d(64, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = BasicConv2d(96, 3, stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionC(nn.Module):
  """FIDInceptionC: factorised 7x7 branches (1x7 / 7x1) and the no-pad-count average pool -> 768 channels."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, 1, name='branch1x1')(x)
    b7 = BasicConv2d(c7, 1, name='branch7x7_1')(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv2d(c7, 1, name='branch7x7dbl_1')(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv2d(192, 1, name='branch_pool')(avg_pool_3x3_no_pad_count(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """torchvision's InceptionD (Mixed_7a, unpatched): stride-2 reduction, [B, 17, 17, 768] -> [B, 8, 8, 1280]."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(192, 1, name='branch3x3_1')(x)
    b3 = BasicConv2d(320, 3, stride=2, name='branch3x3_2')(b3)
    b7 = BasicConv2d(192, 1, name='branch7x7x3_1')(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv2d(192, 3, stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionE(nn.Module):
  """FIDInceptionE_1 (pool='avg', the no-pad-count average) or FIDInceptionE_2 (pool='max') -> 2048 channels."""
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(320, 1, name='branch1x1')(x)
    b3 = BasicConv2d(384, 1, name='branch3x3_1')(x)
    b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], axis=-1)
    bd = BasicConv2d(448, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], axis=-1)
    pooled = max_pool_3x3(x, 1, 1) if self.pool == 'max' else avg_pool_3x3_no_pad_count(x)
    bp = BasicConv2d(192, 1, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """pytorch-fid's InceptionV3 (output block 3): images [B, H, W, 3] 0..255 RGB -> pool3 features [B, 2048] float32.

  `input_size` is what the images are resized to (299 for FID; the architecture takes any size from 75 up).
  """
  input_size: int = INPUT_SIZE

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = images.astype(jnp.float32) / 255.0
    x = resize_bilinear(x, (self.input_size, self.input_size))  # [B, 299, 299, 3]
    x = 2.0 * x - 1.0
    x = BasicConv2d(32, 3, stride=2, name='Conv2d_1a_3x3')(x)  # [B, 149, 149, 32]
    x = BasicConv2d(32, 3, name='Conv2d_2a_3x3')(x)  # [B, 147, 147, 32]
    x = BasicConv2d(64, 3, padding=1, name='Conv2d_2b_3x3')(x)  # [B, 147, 147, 64]
    x = max_pool_3x3(x, 2, 0)  # [B, 73, 73, 64]
    x = BasicConv2d(80, 1, name='Conv2d_3b_1x1')(x)  # [B, 73, 73, 80]
    x = BasicConv2d(192, 3, name='Conv2d_4a_3x3')(x)  # [B, 71, 71, 192]
    x = max_pool_3x3(x, 2, 0)  # [B, 35, 35, 192]
    x = InceptionA(32, name='Mixed_5b')(x)  # [B, 35, 35, 256]
    x = InceptionA(64, name='Mixed_5c')(x)  # [B, 35, 35, 288]
    x = InceptionA(64, name='Mixed_5d')(x)  # [B, 35, 35, 288]
    x = InceptionB(name='Mixed_6a')(x)  # [B, 17, 17, 768]
    for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
      x = InceptionC(c7, name=name)(x)  # [B, 17, 17, 768]
    x = InceptionD(name='Mixed_7a')(x)  # [B, 8, 8, 1280]
    x = InceptionE('avg', name='Mixed_7b')(x)  # [B, 8, 8, 2048]
    x = InceptionE('max', name='Mixed_7c')(x)  # [B, 8, 8, 2048]
    return jnp.mean(x, axis=(1, 2))  # [B, 2048]: pool3


def variable_shapes(module: FIDInceptionV3) -> dict[str, Any]:
  """{'params', 'batch_stats'} as ShapeDtypeStructs (no computation)."""
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3), jnp.float32)))


def load_variables(weights: str | Mapping[str, np.ndarray], module: FIDInceptionV3 | None = None) -> dict[str, Any]:
  """The variables of `module` from pytorch-fid's state dict: a file path (.pth with PyTorch, or the same keys
  converted to .npz / .safetensors by `python -m rtda_jax.models.pretrained convert`) or a {key: array} mapping.
  A missing, unexpected or mis-shaped key is a ValueError listing them (pretrained.check_state_dict)."""
  from rtda_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  source = weights if isinstance(weights, str) else 'the state dict'
  state_dict = pretrained.read_state_dict(weights) if isinstance(weights, str) else dict(weights)
  shapes = variable_shapes(module or FIDInceptionV3())
  return pretrained.load_backbone(state_dict, shapes, source=source)
