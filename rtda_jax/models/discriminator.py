"""Domain discriminators: AdaptSegNet's fully convolutional one ('fc') and a depthwise-separable one ('light').

Both: [B, H, W, C] (softmax of segmentation logits, or features) -> logits [B, H/32, W/32, 1] float32.
Five 4x4 stride-2 convs with explicit padding 1, channels C -> 64 -> 128 -> 256 -> 512 -> 1, LeakyReLU(0.2)
after the first four, no normalisation.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

CHANNELS = (64, 128, 256, 512, 1)


def _conv4x4(features: int, dtype: Any, name: str, groups: int = 1) -> nn.Conv:
  return nn.Conv(features, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=groups,
                 dtype=dtype, param_dtype=jnp.float32, name=name)


class DepthwiseSeparableConv(nn.Module):
  """Depthwise 4x4 stride-2 conv ('depthwise') + pointwise 1x1 conv ('pointwise'), both with bias."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    channels = x.shape[-1]
    x = _conv4x4(channels, self.dtype, 'depthwise', groups=channels)(x)
    return nn.Conv(self.features, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name='pointwise')(x)


class FCDiscriminator(nn.Module):
  """AdaptSegNet's discriminator (convs 'conv1'..'conv4', 'classifier'), or its light variant."""
  in_channels: int
  light: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if x.shape[-1] != self.in_channels:
      raise ValueError(f'Discriminator built for {self.in_channels} input channels got {x.shape[-1]}.')
    x = x.astype(self.dtype)
    names = ('conv1', 'conv2', 'conv3', 'conv4', 'classifier')
    for i, (features, name) in enumerate(zip(CHANNELS, names)):
      if self.light:
        x = DepthwiseSeparableConv(features, self.dtype, name=name)(x)
      else:
        x = _conv4x4(features, self.dtype, name)(x)
      if i < len(CHANNELS) - 1:
        x = nn.leaky_relu(x, negative_slope=0.2)
    return x.astype(jnp.float32)  # [B, H/32, W/32, 1]


DISCRIMINATORS: dict[str, Callable[[int, Any], nn.Module]] = {
    'fc': lambda channels, dtype: FCDiscriminator(channels, light=False, dtype=dtype),
    'light': lambda channels, dtype: FCDiscriminator(channels, light=True, dtype=dtype),
}
