"""BatchNorm with PyTorch's BatchNorm2d arithmetic, and the three BatchNorm modes of the segmentation models.

`BatchNorm` keeps flax's variable names ('params': 'scale', 'bias'; 'batch_stats': 'mean', 'var'), so torchvision
and DeepLab weights map one to one (`pretrained.py`), and differs from `flax.linen.BatchNorm` where PyTorch does:
the running variance is updated with the UNBIASED batch variance (x n / (n - 1), n = B*H*W values per channel),
while the normalisation uses the biased one, as `torch.nn.BatchNorm2d` in training. Momentum 0.9 here is PyTorch's
0.1 (running = 0.9 running + 0.1 batch), eps 1e-5; statistics and the normalisation are computed in float32 whatever
the compute dtype, the output is in `dtype`.

Under `jax.jit` with the batch sharded on a mesh (`rtda_jax.parallel`) the arrays are global, so the mean, the
variance and n are over the global batch of every device (synchronised BN; XLA inserts the all-reduce).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# 'train': batch statistics in training, affine learned, running statistics updated (ordinary BN);
# 'batch': the same forward pass, affine frozen by the optimiser (AdaptSegNet / FDA / DACS's DeepLab-v2);
# 'frozen': running statistics in training too (never updated), affine frozen.
BN_MODES = ('train', 'batch', 'frozen')


def check_bn_mode(mode: str) -> str:
  """`mode` if it is one of BN_MODES, else a ValueError naming config.model.bn_mode."""
  if mode not in BN_MODES:
    raise ValueError(f'config.model.bn_mode={mode!r}: choose one of {BN_MODES} (or None for the model default).')
  return mode


def uses_running_average(train: bool, mode: str) -> bool:
  """Whether BatchNorm normalises with its running statistics: always in eval, and in training in 'frozen' mode."""
  return check_bn_mode(mode) == 'frozen' or not train


def affine_frozen(mode: str) -> bool:
  """Whether the optimiser leaves BatchNorm's scale and bias alone ('batch' and 'frozen' modes)."""
  return check_bn_mode(mode) != 'train'


class BatchNorm(nn.Module):
  """BatchNorm over every axis but the last: x [..., C] -> [..., C] in `dtype` (None: x's dtype).

  `use_running_average=False` normalises with the batch's mean and biased variance and (except during init) moves
  the running statistics towards the batch mean and unbiased variance, as PyTorch in training.
  """
  momentum: float = 0.9  # PyTorch's momentum 0.1
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (channels,), self.param_dtype)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((channels,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((channels,), jnp.float32))
    xf = x.astype(jnp.float32)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(xf, axis=axes)  # [C]
      var = jnp.mean(jnp.square(xf - mean), axis=axes)  # [C] biased: what the normalisation uses
      if not self.is_initializing():
        n = x.size // channels
        if n < 2:
          raise ValueError(f'BatchNorm in training needs more than 1 value per channel (input shape {x.shape}), '
                           'as PyTorch does: use a larger batch or image, or model.bn_mode=frozen.')
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var * (n / (n - 1))
    mul = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)  # [C]
    y = (xf - mean) * mul + bias.astype(jnp.float32)
    return y.astype(self.dtype or x.dtype)
