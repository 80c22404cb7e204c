"""CycleGAN's image-to-image networks (Zhu et al. 2017; junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py),
NHWC: the ResNet generator and the PatchGAN discriminator, both with instance normalisation.

`ResnetGenerator` (Johnson et al.'s architecture, the paper's appendix): c7s1-ngf, d(2 ngf), d(4 ngf), `num_blocks`
residual blocks R(4 ngf), u(2 ngf), u(ngf), c7s1-3, tanh. Reflection padding before every stride-1 conv, instance
norm without affine (PyTorch's InstanceNorm2d default, eps 1e-5) and ReLU after every conv but the last; convs with
bias. The two downsampling convs are 3x3 stride 2 with zero padding 1; the two upsampling steps are either the
reference's fractionally-strided conv (`upsample='transpose'`: PyTorch ConvTranspose2d(k=3, s=2, p=1,
output_padding=1), i.e. a conv on the 2x-dilated input padded (1, 2)) or, without checkerboard artefacts and faster
in XLA on GPU, a bilinear 2x resize, reflection pad 1 and a 3x3 conv (`upsample='resize'`). Images in [-1, 1]
[B, H, W, 3] -> [-1, 1] [B, H, W, 3] float32; H and W must be multiples of 4 (two stride-2 steps).

`PatchDiscriminator` (NLayerDiscriminator, the 70x70 PatchGAN for `num_layers=3`): 4x4 convs with zero padding 1,
C -> ndf (stride 2, LeakyReLU 0.2, no norm) -> ndf * min(2^n, 8) for n = 1 .. L-1 (stride 2, instance norm, LeakyReLU)
-> ndf * min(2^L, 8) (stride 1, instance norm, LeakyReLU) -> 1 (stride 1): one real/fake logit per 70x70 patch,
[B, H/8 - 2, W/8 - 2, 1] float32 for L = 3.

Weights are initialised N(0, 0.02) and biases 0, as the reference's init_weights('normal', 0.02).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

UPSAMPLE_MODES = ('transpose', 'resize')
_INIT = nn.initializers.normal(0.02)


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  """Reflection padding of H and W by `pad` pixels ([B, H, W, C] -> [B, H + 2p, W + 2p, C]), PyTorch's
  ReflectionPad2d."""
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')


def _conv(features: int, kernel: int, stride: int, padding: Any, dtype: Any, name: str) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=_INIT, name=name)


def _instance_norm(dtype: Any, name: str) -> nn.InstanceNorm:
  """PyTorch's InstanceNorm2d(affine=False): per-sample, per-channel statistics over H, W; two-pass variance."""
  return nn.InstanceNorm(epsilon=1e-5, use_scale=False, use_bias=False, use_fast_variance=False, dtype=dtype,
                         name=name)


class ResnetBlock(nn.Module):
  """x + IN(conv3(pad(ReLU(IN(conv3(pad(x))))))), channels unchanged."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = _conv(self.features, 3, 1, 'VALID', self.dtype, 'conv1')(reflect_pad(x, 1))
    y = nn.relu(_instance_norm(self.dtype, 'norm1')(y))
    y = _conv(self.features, 3, 1, 'VALID', self.dtype, 'conv2')(reflect_pad(y, 1))
    return x + _instance_norm(self.dtype, 'norm2')(y)


class ResnetGenerator(nn.Module):
  """CycleGAN's ResNet generator: [B, H, W, 3] in [-1, 1] -> [B, H, W, 3] in [-1, 1] float32."""
  ngf: int = 64
  num_blocks: int = 9
  upsample: str = 'transpose'
  out_channels: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h, w = x.shape[1:3]
    if h % 4 or w % 4:
      raise ValueError(f'The ResNet generator needs H and W that are multiples of 4 (two stride-2 steps); got '
                       f'{h}x{w}. Pad the image (rtda_jax.translate_data pads by reflection) or change the crop size.')
    if self.upsample not in UPSAMPLE_MODES:
      raise ValueError(f'translate.upsample={self.upsample!r}: choose one of {UPSAMPLE_MODES}.')
    x = x.astype(self.dtype)
    x = _conv(self.ngf, 7, 1, 'VALID', self.dtype, 'conv_in')(reflect_pad(x, 3))  # c7s1-ngf
    x = nn.relu(_instance_norm(self.dtype, 'norm_in')(x))
    for i, mult in enumerate((2, 4)):  # d(2 ngf), d(4 ngf)
      x = _conv(self.ngf * mult, 3, 2, ((1, 1), (1, 1)), self.dtype, f'down{i}')(x)
      x = nn.relu(_instance_norm(self.dtype, f'down{i}_norm')(x))
    for i in range(self.num_blocks):
      x = ResnetBlock(self.ngf * 4, self.dtype, name=f'block{i}')(x)
    for i, mult in enumerate((2, 1)):  # u(2 ngf), u(ngf)
      if self.upsample == 'transpose':
        x = nn.ConvTranspose(self.ngf * mult, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), dtype=self.dtype,
                             param_dtype=jnp.float32, kernel_init=_INIT, name=f'up{i}')(x)
      else:
        b, hh, ww, c = x.shape
        x = jax.image.resize(x, (b, 2 * hh, 2 * ww, c), 'bilinear')
        x = _conv(self.ngf * mult, 3, 1, 'VALID', self.dtype, f'up{i}')(reflect_pad(x, 1))
      x = nn.relu(_instance_norm(self.dtype, f'up{i}_norm')(x))
    x = _conv(self.out_channels, 7, 1, 'VALID', self.dtype, 'conv_out')(reflect_pad(x, 3))  # c7s1-3
    return jnp.tanh(x.astype(jnp.float32))


def patch_output_size(size: int, num_layers: int = 3) -> int:
  """Spatial size of the PatchGAN's output for an input of `size`: num_layers 4x4 stride-2 convs with padding 1
  (floor(n / 2) each), then two 4x4 stride-1 convs (n - 1 each)."""
  for _ in range(num_layers):
    size = (size + 2 - 4) // 2 + 1
  return size - 2


class PatchDiscriminator(nn.Module):
  """CycleGAN's PatchGAN: [B, H, W, C] in [-1, 1] -> real/fake logits [B, h, w, 1] float32, one per patch."""
  ndf: int = 64
  num_layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if min(patch_output_size(n, self.num_layers) for n in x.shape[1:3]) < 1:
      raise ValueError(f'PatchGAN input of size {tuple(x.shape[1:3])} is too small for {self.num_layers} stride-2 '
                       'layers (the output would be empty); use larger crops or fewer translate.disc_layers.')
    pad = ((1, 1), (1, 1))
    x = nn.leaky_relu(_conv(self.ndf, 4, 2, pad, self.dtype, 'conv0')(x.astype(self.dtype)), 0.2)
    for n in range(1, self.num_layers + 1):
      stride = 2 if n < self.num_layers else 1
      x = _conv(self.ndf * min(2 ** n, 8), 4, stride, pad, self.dtype, f'conv{n}')(x)
      x = nn.leaky_relu(_instance_norm(self.dtype, f'norm{n}')(x), 0.2)
    x = _conv(1, 4, 1, pad, self.dtype, 'classifier')(x)
    return x.astype(jnp.float32)
