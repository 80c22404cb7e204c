"""Pure JAX augmentations for semantic segmentation, jit- and vmap-friendly.

Every op is `op(key, image, label) -> (image, label)` on ONE example: image float [H, W, 3] in 0..255 RGB, label
int [H, W] train ids with IGNORE = 255. An op applies with probability `p` (a draw from its key, selected with
`jnp.where`, so shapes stay static), keeps shape and dtype, and is a pure function of the key. Geometric ops move
image and label together (bilinear image, nearest label; what falls outside the source becomes `pad_value` in the
image and IGNORE in the label). Photometric ops change the image only and clip it to 0..255.

`build(spec)` composes ops from `config.train.augment`; `batched(fn)` vmaps one over a batch with one key per example.

DACS 'strong' preset (Tranheden et al.; vikolss/DACS `utils/transformsgpu.py` with the kornia of 2020, 0.4.x):
- colour jitter `ColorJitter(brightness=s, contrast=s, saturation=s, hue=s)`, s = 0.25, when `uniform() > 0.2`
  (p = 0.8), the four adjustments in a random order (kornia's randperm(4)), each clamped, on the image in 0..1.
  That kornia's semantics (style='dacs'): brightness ADDS U(-s, s) (x 255 here), contrast MULTIPLIES by
  U(1-s, 1+s) without centring on the mean, saturation scales HSV S by U(1-s, 1+s), hue shifts HSV H by U(-s, s)
  turns: hue 0.25 is +-0.25 of the hue circle (+-90 degrees), as in torchvision, NOT SimCLR's 0.2 * strength.
  (DACS feeds BGR images; the hue and saturation draws are symmetric, so RGB here is equivalent.)
- Gaussian blur when `uniform() > 0.5` (p = 0.5), sigma ~ U(0.15, 1.15), kernel size per axis = the largest odd
  number <= ceil(0.1 * size) (`dacs_kernel_size`: 51 for 512, 1 below 21 pixels), reflect padding (kornia default).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

IGNORE = 255
Op = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
BatchedOp = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision / kornia
_STYLES = ('dacs', 'torchvision')


def identity(key: jax.Array, image: jax.Array, label: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The op that changes nothing."""
  del key
  return image, label


def _check(p: float, lo: float | None = None, hi: float | None = None, style: str | None = None) -> None:
  if not 0.0 <= p <= 1.0:
    raise ValueError(f'augmentation probability p must be in [0, 1], got {p}')
  if lo is not None and hi is not None and lo > hi:
    raise ValueError(f'augmentation range needs min <= max, got min={lo}, max={hi}')
  if style is not None and style not in _STYLES:
    raise ValueError(f'colour style must be one of {_STYLES}, got {style!r}')


def _geometric(p: float, fn: Op) -> Op:
  """Wraps fn(key, image, label) so that it applies with probability p."""
  if p == 0.0:
    return identity

  def op(key, image, label):
    k_gate, k_fn = jax.random.split(key)
    new_image, new_label = fn(k_fn, image, label)
    apply = jax.random.bernoulli(k_gate, p)
    return (jnp.where(apply, new_image.astype(image.dtype), image),
            jnp.where(apply, new_label.astype(label.dtype), label))
  return op


def _photometric(p: float, fn: Callable[[jax.Array, jax.Array], jax.Array]) -> Op:
  """Wraps fn(key, image float32 0..255) -> image; applies with probability p, clips, never touches the label."""
  if p == 0.0:
    return identity

  def op(key, image, label):
    k_gate, k_fn = jax.random.split(key)
    new_image = jnp.clip(fn(k_fn, image.astype(jnp.float32)), 0.0, 255.0).astype(image.dtype)
    return jnp.where(jax.random.bernoulli(k_gate, p), new_image, image), label
  return op


# ---- geometric ----------------------------------------------------------------------------------------------------

def _warp(image: jax.Array, label: jax.Array, src_y: jax.Array, src_x: jax.Array,
          pad_value: float) -> tuple[jax.Array, jax.Array]:
  """Samples image (bilinear) and label (nearest) at source pixel coordinates src_y, src_x [H, W]."""
  h, w = label.shape
  valid = (src_y >= -0.5) & (src_y <= h - 0.5) & (src_x >= -0.5) & (src_x <= w - 0.5)  # [H, W]
  iy = jnp.clip(jnp.floor(src_y + 0.5), 0, h - 1).astype(jnp.int32)
  ix = jnp.clip(jnp.floor(src_x + 0.5), 0, w - 1).astype(jnp.int32)
  new_label = jnp.where(valid, label[iy, ix], IGNORE)
  yc, xc = jnp.clip(src_y, 0, h - 1), jnp.clip(src_x, 0, w - 1)
  y0, x0 = jnp.floor(yc), jnp.floor(xc)
  wy, wx = (yc - y0)[..., None], (xc - x0)[..., None]  # [H, W, 1]
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
  img = image.astype(jnp.float32)
  top = img[y0, x0] * (1 - wx) + img[y0, x1] * wx  # [H, W, 3]
  bottom = img[y1, x0] * (1 - wx) + img[y1, x1] * wx
  new_image = jnp.where(valid[..., None], top * (1 - wy) + bottom * wy, pad_value)
  return new_image.astype(image.dtype), new_label


def hflip(p: float = 0.5) -> Op:
  """Horizontal flip of image and label."""
  _check(p)
  return _geometric(p, lambda key, image, label: (image[:, ::-1], label[:, ::-1]))


def scale(p: float = 0.5, min: float = 0.5, max: float = 2.0, pad_value: float = 0.0) -> Op:  # noqa: A002
  """Zoom by s ~ U(min, max), then a random crop (s > 1) or placement on a padded canvas (s < 1) back to [H, W]."""
  _check(p, min, max)
  lo, hi = float(min), float(max)

  def fn(key, image, label):
    h, w = label.shape
    k_s, k_y, k_x = jax.random.split(key, 3)
    s = jax.random.uniform(k_s, (), minval=lo, maxval=hi)
    off_y = jax.random.uniform(k_y) * (s * h - h)  # crop offset in the zoomed image; negative = padding
    off_x = jax.random.uniform(k_x) * (s * w - w)
    ys = (jnp.arange(h) + 0.5 + off_y) / s - 0.5  # [H] source rows (pixel centres at integers)
    xs = (jnp.arange(w) + 0.5 + off_x) / s - 0.5  # [W]
    src_y, src_x = jnp.meshgrid(ys, xs, indexing='ij')
    return _warp(image, label, src_y, src_x, pad_value)
  return _geometric(p, fn)


def rotate(p: float = 0.5, degrees: float = 10.0, pad_value: float = 0.0) -> Op:
  """Rotation about the image centre by an angle ~ U(-degrees, degrees)."""
  _check(p)

  def fn(key, image, label):
    h, w = label.shape
    theta = jnp.deg2rad(jax.random.uniform(key, (), minval=-degrees, maxval=degrees))
    cy, cx = (h - 1) / 2, (w - 1) / 2
    dy, dx = jnp.meshgrid(jnp.arange(h) - cy, jnp.arange(w) - cx, indexing='ij')  # [H, W]
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    return _warp(image, label, cos * dy - sin * dx + cy, sin * dy + cos * dx + cx, pad_value)
  return _geometric(p, fn)


# ---- photometric --------------------------------------------------------------------------------------------------

def _gray(x: jax.Array) -> jax.Array:
  """[H, W, 3] -> luma [H, W, 1]."""
  return (x * jnp.asarray(_GRAY, x.dtype)).sum(-1, keepdims=True)


def _rgb_to_hsv(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """RGB [..., 3] in 0..1 -> (h in 0..1, s, v), each [...]."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  v = x.max(-1)
  c = v - x.min(-1)
  s = c / jnp.where(v > 0, v, 1.0)
  cs = jnp.where(c > 0, c, 1.0)
  rc, gc, bc = (v - r) / cs, (v - g) / cs, (v - b) / cs
  h = jnp.where(r == v, bc - gc, jnp.where(g == v, 2.0 + rc - bc, 4.0 + gc - rc))
  return jnp.where(c > 0, (h / 6.0) % 1.0, 0.0), s, v


def _hsv_to_rgb(h: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
  """(h in 0..1, s, v), each [...] -> RGB [..., 3]."""
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.astype(jnp.int32) % 6
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  cases = [i == k for k in range(6)]
  r = jnp.select(cases, [v, q, p, p, t, v])
  g = jnp.select(cases, [t, v, v, q, p, p])
  b = jnp.select(cases, [p, p, t, v, v, q])
  return jnp.stack([r, g, b], -1)


def _adjust_hsv(x: jax.Array, hue_shift: jax.Array | float = 0.0, sat_factor: jax.Array | float = 1.0) -> jax.Array:
  h, s, v = _rgb_to_hsv(x / 255.0)
  return _hsv_to_rgb((h + hue_shift) % 1.0, jnp.clip(s * sat_factor, 0.0, 1.0), v) * 255.0


def _brightness(x: jax.Array, delta: jax.Array, style: str) -> jax.Array:
  """dacs: x + 255 delta (kornia 0.4); torchvision: x * (1 + delta)."""
  return jnp.clip(x + 255.0 * delta if style == 'dacs' else x * (1.0 + delta), 0.0, 255.0)


def _contrast(x: jax.Array, factor: jax.Array, style: str) -> jax.Array:
  """dacs: x * factor (kornia 0.4); torchvision: blend with the mean grey level."""
  out = x * factor if style == 'dacs' else factor * x + (1.0 - factor) * _gray(x).mean()
  return jnp.clip(out, 0.0, 255.0)


def _saturation(x: jax.Array, factor: jax.Array, style: str) -> jax.Array:
  """dacs: scale HSV saturation (kornia 0.4); torchvision: blend with the grey image."""
  out = _adjust_hsv(x, sat_factor=factor) if style == 'dacs' else factor * x + (1.0 - factor) * _gray(x)
  return jnp.clip(out, 0.0, 255.0)


def _uniform_pm(key: jax.Array, strength: float) -> jax.Array:
  return jax.random.uniform(key, (), minval=-strength, maxval=strength)


def color_jitter(p: float = 0.8, brightness: float = 0.25, contrast: float = 0.25, saturation: float = 0.25,
                 hue: float = 0.25, style: str = 'dacs') -> Op:
  """Brightness, contrast, saturation and hue jitter in a random order (DACS / kornia ColorJitter)."""
  _check(p, style=style)

  def fn(key, x):
    k_b, k_c, k_s, k_h, k_order = jax.random.split(key, 5)
    d_b, d_c, d_s, d_h = (_uniform_pm(k, v) for k, v in
                          ((k_b, brightness), (k_c, contrast), (k_s, saturation), (k_h, hue)))
    branches = [lambda y: _brightness(y, d_b, style), lambda y: _contrast(y, 1.0 + d_c, style),
                lambda y: _saturation(y, 1.0 + d_s, style), lambda y: jnp.clip(_adjust_hsv(y, hue_shift=d_h), 0, 255)]
    order = jax.random.permutation(k_order, 4)
    for i in range(4):
      x = lax.switch(order[i], branches, x)
    return x
  return _photometric(p, fn)


def brightness(p: float = 0.5, strength: float = 0.25, style: str = 'torchvision') -> Op:
  """Brightness jitter by U(-strength, strength) (multiplicative; style='dacs': additive, x 255)."""
  _check(p, style=style)
  return _photometric(p, lambda key, x: _brightness(x, _uniform_pm(key, strength), style))


def contrast(p: float = 0.5, strength: float = 0.25, style: str = 'torchvision') -> Op:
  """Contrast factor U(1 - strength, 1 + strength)."""
  _check(p, style=style)
  return _photometric(p, lambda key, x: _contrast(x, 1.0 + _uniform_pm(key, strength), style))


def saturation(p: float = 0.5, strength: float = 0.25, style: str = 'torchvision') -> Op:
  """Saturation factor U(1 - strength, 1 + strength)."""
  _check(p, style=style)
  return _photometric(p, lambda key, x: _saturation(x, 1.0 + _uniform_pm(key, strength), style))


def hue(p: float = 0.5, strength: float = 0.1) -> Op:
  """Hue rotation by U(-strength, strength) turns of the HSV hue circle (0.5 = complementary colours)."""
  _check(p)
  return _photometric(p, lambda key, x: _adjust_hsv(x, hue_shift=_uniform_pm(key, strength)))


def gamma(p: float = 0.5, min: float = 0.7, max: float = 1.5) -> Op:  # noqa: A002
  """Gamma correction 255 (x / 255) ** g with g ~ U(min, max)."""
  _check(p, min, max)
  if min <= 0:
    raise ValueError(f'gamma needs min > 0, got {min}')
  lo, hi = float(min), float(max)
  return _photometric(p, lambda key, x: 255.0 * (x / 255.0) ** jax.random.uniform(key, (), minval=lo, maxval=hi))


def dacs_kernel_size(size: int) -> int:
  """DACS's Gaussian kernel size for an axis of `size` pixels: the largest odd number <= ceil(0.1 * size)."""
  c = math.ceil(0.1 * size)
  return int(math.floor(c - 0.5 + c % 2))


def _blur_axis(x: jax.Array, sigma: jax.Array, size: int, axis: int) -> jax.Array:
  """Gaussian blur of x [H, W, 3] along one axis, kernel of odd static size, reflect padding."""
  r = min(size // 2, x.shape[axis] - 1)
  if r <= 0:
    return x
  taps = jnp.arange(-r, r + 1, dtype=jnp.float32)
  kernel = jnp.exp(-taps ** 2 / (2.0 * sigma ** 2))
  kernel = kernel / kernel.sum()  # [2r + 1]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r, r)
  xp = jnp.pad(x, pad, mode='reflect')
  n = x.shape[axis]
  return sum(kernel[i] * lax.slice_in_dim(xp, i, i + n, axis=axis) for i in range(2 * r + 1))


def blur(p: float = 0.5, min: float = 0.15, max: float = 1.15, kernel_size: int | None = None) -> Op:  # noqa: A002
  """Separable Gaussian blur, sigma ~ U(min, max); kernel_size None = DACS's rule per axis (`dacs_kernel_size`)."""
  _check(p, min, max)
  if min <= 0:
    raise ValueError(f'blur needs sigma min > 0, got {min}')
  lo, hi = float(min), float(max)

  def fn(key, x):
    sigma = jax.random.uniform(key, (), minval=lo, maxval=hi)
    for axis in (0, 1):
      size = kernel_size if kernel_size is not None else dacs_kernel_size(x.shape[axis])
      x = _blur_axis(x, sigma, size, axis)
    return x
  return _photometric(p, fn)


def noise(p: float = 0.5, std: float = 5.0) -> Op:
  """Additive Gaussian noise with standard deviation `std` (0..255 units), per pixel and channel."""
  _check(p)
  return _photometric(p, lambda key, x: x + std * jax.random.normal(key, x.shape, jnp.float32))


def grayscale(p: float = 0.2) -> Op:
  """Replaces the image by its luma in all three channels."""
  _check(p)
  return _photometric(p, lambda key, x: jnp.broadcast_to(_gray(x), x.shape))


# ---- composition --------------------------------------------------------------------------------------------------

GEOMETRIC: dict[str, Callable[..., Op]] = {'hflip': hflip, 'scale': scale, 'rotate': rotate}
PHOTOMETRIC: dict[str, Callable[..., Op]] = {
    'color_jitter': color_jitter, 'brightness': brightness, 'contrast': contrast, 'saturation': saturation,
    'hue': hue, 'gamma': gamma, 'blur': blur, 'noise': noise, 'grayscale': grayscale}
OPS: dict[str, Callable[..., Op]] = {**GEOMETRIC, **PHOTOMETRIC}

PRESETS: dict[str, tuple[dict[str, Any], ...]] = {
    'none': (),
    'light': (
        {'name': 'hflip', 'p': 0.5},
        {'name': 'scale', 'p': 0.5, 'min': 0.75, 'max': 1.5},
        {'name': 'brightness', 'p': 0.5, 'strength': 0.2},
        {'name': 'contrast', 'p': 0.5, 'strength': 0.2},
    ),
    'strong': (  # DACS: see the module docstring
        {'name': 'color_jitter', 'p': 0.8, 'brightness': 0.25, 'contrast': 0.25, 'saturation': 0.25, 'hue': 0.25,
         'style': 'dacs'},
        {'name': 'blur', 'p': 0.5, 'min': 0.15, 'max': 1.15},
    ),
}


def _unknown(name: Any) -> ValueError:
  return ValueError(f'unknown augmentation {name!r}; known ops: {sorted(OPS)}; presets: {sorted(PRESETS)}')


def _entries(spec: Any) -> list[dict[str, Any]]:
  """A spec (preset name, 'a,b' string, or sequence of names / dicts / ConfigDicts) -> list of entry dicts."""
  if spec is None:
    return []
  if isinstance(spec, str):
    spec = [s.strip() for s in spec.split(',') if s.strip()]
  if not isinstance(spec, Sequence):
    raise ValueError(f'augmentation spec must be a preset name or a sequence of entries, got {spec!r}')
  out = []
  for entry in spec:
    if isinstance(entry, str) and entry in PRESETS:
      out.extend(dict(e) for e in PRESETS[entry])
    elif isinstance(entry, str):
      out.append({'name': entry})
    elif isinstance(entry, Mapping) or hasattr(entry, 'to_dict'):
      d = dict(entry.to_dict() if hasattr(entry, 'to_dict') else entry)
      if 'name' not in d:
        raise ValueError(f"augmentation entry {d} has no 'name'; known ops: {sorted(OPS)}")
      out.append(d)
    else:
      raise ValueError(f'augmentation entry must be a name or a dict with a name, got {entry!r}')
  return out


def make_op(entry: Mapping[str, Any]) -> Op:
  """One op from an entry {'name': ..., **params}."""
  params = dict(entry)
  name = params.pop('name')
  if name not in OPS:
    raise _unknown(name)
  factory = OPS[name]
  accepted = list(inspect.signature(factory).parameters)
  extra = sorted(set(params) - set(accepted))
  if extra:
    raise ValueError(f'augmentation {name!r} has no parameter(s) {extra}; it takes {accepted}')
  return factory(**params)


def build(spec: Any, only: str | None = None) -> Op:
  """Composes ops from `config.train.augment`: 'none' / 'light' / 'strong', or a sequence of names / dicts.

  only: None (all), 'geometric' or 'photometric' keeps that group. Each op gets its own subkey.
  """
  groups = {None: OPS, 'geometric': GEOMETRIC, 'photometric': PHOTOMETRIC}
  if only not in groups:
    raise ValueError(f"only must be None, 'geometric' or 'photometric', got {only!r}")
  built = [(e['name'], make_op(e)) for e in _entries(spec)]  # validates every entry, kept or not
  ops = [op for name, op in built if name in groups[only] and op is not identity]
  if not ops:
    return identity

  def fn(key: jax.Array, image: jax.Array, label: jax.Array) -> tuple[jax.Array, jax.Array]:
    for k, op in zip(jax.random.split(key, len(ops)), ops):
      image, label = op(k, image, label)
    return image, label
  return fn


def geometric(spec: Any) -> Op:
  """The geometric ops of a spec only."""
  return build(spec, only='geometric')


def photometric(spec: Any) -> Op:
  """The photometric ops of a spec only (e.g. DACS's strong augmentation of mixed images)."""
  return build(spec, only='photometric')


def batched(fn: Op) -> BatchedOp:
  """(key, images [B, H, W, 3], labels [B, H, W]) -> (images, labels): one key per example, vmapped."""
  vmapped = jax.vmap(fn)

  def apply(key: jax.Array, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    return vmapped(jax.random.split(key, images.shape[0]), images, labels)
  return apply
