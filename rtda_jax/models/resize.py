"""Bilinear resizing of feature maps / logits in both of PyTorch's conventions.

`align_corners=False` (half-pixel centres, `jax.image.resize`) is what BiSeNet and current PyTorch use;
`align_corners=True` maps the corner pixels of input and output onto each other (output index i samples input
coordinate i * (in - 1) / (out - 1)), which is what AdaptSegNet, FDA and DACS use to upsample DeepLab-v2's logits
(`nn.Upsample(..., mode='bilinear', align_corners=True)`). Neither antialiases, as in PyTorch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _align_corners_axis(x: jnp.ndarray, out: int, axis: int) -> jnp.ndarray:
  """Linear interpolation along `axis` of x to `out` samples with align_corners=True semantics."""
  n = x.shape[axis]
  if n == out:
    return x
  if out == 1 or n == 1:
    idx = jnp.zeros((out,), jnp.int32)  # PyTorch samples input coordinate 0 when out == 1
    return jnp.take(x, idx, axis=axis)
  pos = jnp.arange(out, dtype=jnp.float32) * ((n - 1) / (out - 1))  # [out] input coordinates
  lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, n - 2)
  frac = (pos - lo.astype(jnp.float32)).astype(x.dtype)
  shape = [1] * x.ndim
  shape[axis] = out
  frac = frac.reshape(shape)
  return jnp.take(x, lo, axis=axis) * (1 - frac) + jnp.take(x, lo + 1, axis=axis) * frac


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int], align_corners: bool = False) -> jnp.ndarray:
  """[B, h, w, C] -> [B, H, W, C] bilinear, no antialiasing; `align_corners` as in PyTorch's F.interpolate."""
  size = tuple(int(s) for s in size)
  if tuple(x.shape[1:3]) == size:
    return x
  if not align_corners:
    return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), method='bilinear', antialias=False)
  return _align_corners_axis(_align_corners_axis(x, size[0], 1), size[1], 2)
