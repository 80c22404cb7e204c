"""FDA: Fourier domain adaptation (Yang & Soatto, CVPR 2020), with its self-training round.

Per step: each source image takes the low-frequency amplitude spectrum of a random target image of the batch
(`low_frequency_swap`, no learning), then
  loss = CE(transformed source) [+ aux heads]  +  fda.entropy_weight * robust entropy(target logits)
         [+ selftrain.pseudo_weight * CE(target, pseudo-labels)   when selftrain.pseudo_dir is set].
With `selftrain.pseudo_dir` the target batches come from a pseudo-labelled copy of the target training split (a raw
Cityscapes-layout folder written by `rtda_jax.selftrain`), read through the `train_data` hook.

Differences from the reference code (YanchaoYang/FDA), all deliberate:
- The robust entropy is computed on our models' logits, which are at input resolution; FDA's DeepLab computes it on
  the classifier output at 1/8 resolution, before upsampling. Bilinear upsampling preserves the mean closely.
- The transformed source is clipped to 0..255 (FDA's train.py does not clip; its demo does).
- Each source image takes the style of a random target image of the batch (FDA trains with batch size 1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rtda_jax import augment, losses
from rtda_jax.methods import base, supervised

WINDOWS = ('corners', 'centred')


def window_half_size(shape: tuple[int, int], beta: float) -> int:
  """FDA's b = floor(min(H, W) * beta)."""
  return int(math.floor(min(shape) * beta))


def _signed_frequency(n: int, m: int) -> np.ndarray:
  """Signed frequency of the first m FFT bins of an n-point transform, in fftshift's convention (n // 2 -> -n/2)."""
  f = np.arange(m)
  return np.where(f < n - n // 2, f, f - n)


def _axis_window(n: int, m: int, b: int, window: str) -> np.ndarray:
  """[m] bool: which of the first m bins of an n-point FFT are in the low-frequency window of half-size b."""
  f = np.arange(m)
  if window == 'corners':  # FDA's train.py: amp[0:b] and amp[n-b:n], i.e. frequencies -b .. b-1
    return (f < b) | (f >= n - b)
  if window == 'centred':  # FDA's numpy version: fftshift, then [c-b, c+b] with c = n // 2, i.e. frequencies -b .. b
    k = _signed_frequency(n, m)
    return (k >= -b) & (k <= b)
  raise ValueError(f'config.fda.window={window!r}: choose one of {WINDOWS}.')


def low_frequency_window(shape: tuple[int, int], beta: float, window: str = 'corners') -> np.ndarray:
  """[H, W // 2 + 1] bool: the bins of the one-sided (rfft2) spectrum whose amplitude is taken from the target.

  'corners' (default) is FDA's training code (`low_freq_mutate`): the four b x b corners of the unshifted spectrum,
  a 2b x 2b square of frequencies -b .. b-1 (empty when b = 0). 'centred' is FDA's NumPy version
  (`low_freq_mutate_np`): the centred (2b+1)-square of the shifted spectrum, frequencies -b .. b (the DC bin alone
  when b = 0).
  """
  h, w = shape
  b = window_half_size(shape, beta)
  return _axis_window(h, h, b, window)[:, None] & _axis_window(w, w // 2 + 1, b, window)[None, :]


def _hermitian_columns(spec: jax.Array, w: int) -> jax.Array:
  """Makes the self-conjugate columns (0, and W/2 for even W) of a one-sided spectrum [B, H, W//2+1, C] Hermitian
  along H: X[r] <- (X[r] + conj(X[-r])) / 2. NumPy's irfft2 does this implicitly (it drops their imaginary parts
  after the inverse FFT over H); doing it here keeps the result independent of the FFT backend."""
  cols = [0] + ([w // 2] if w % 2 == 0 and w > 1 else [])
  for c in cols:
    col = spec[:, :, c]  # [B, H, C]
    mirror = jnp.roll(jnp.flip(col, axis=1), 1, axis=1)  # X[-r]
    spec = spec.at[:, :, c].set(0.5 * (col + jnp.conj(mirror)))
  return spec


def low_frequency_swap(source: jax.Array, target: jax.Array, beta: float, window: str = 'corners',
                       clip: bool = True) -> jax.Array:
  """FDA's style transfer: source images with the low-frequency amplitude of the target images.

  source, target: float [B, H, W, C] in 0..255 (un-normalised); example i of `source` takes the style of example i
  of `target`. Per channel: 2-D FFT, amplitude inside `low_frequency_window` from the target, everything else and the
  whole phase from the source, inverse FFT; then clipped to 0..255. Returns float32 [B, H, W, C].

  The inverse is taken from the one-sided spectrum, as FDA's `torch.irfft(..., onesided=False)` does: with the
  'corners' window the modified spectrum is not exactly Hermitian, and the one-sided inverse keeps bins
  0 .. W/2 of the last axis (their mirrors follow). With 'centred' it is Hermitian and this equals real(ifft2).
  """
  source = jnp.asarray(source, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  if source.shape != target.shape:
    raise ValueError(f'low_frequency_swap needs images of one shape; got {source.shape} and {target.shape}.')
  h, w = source.shape[1:3]
  mask = low_frequency_window((h, w), beta, window)
  if mask.any():
    spec_s = jnp.fft.rfft2(source, axes=(1, 2))  # [B, H, W//2+1, C] complex64
    spec_t = jnp.fft.rfft2(target, axes=(1, 2))
    amp = jnp.where(jnp.asarray(mask)[None, :, :, None], jnp.abs(spec_t), jnp.abs(spec_s))
    phase = jnp.angle(spec_s)
    spec = _hermitian_columns(amp * jnp.exp(1j * phase).astype(spec_s.dtype), w)
    source = jnp.fft.irfft2(spec, s=(h, w), axes=(1, 2)).astype(jnp.float32)
  return jnp.clip(source, 0.0, 255.0) if clip else source


def style_targets(key: jax.Array, source: jax.Array, target: jax.Array) -> jax.Array:
  """A random target image of the batch for each source image (a permutation from `key`), at the source's size."""
  styles = target[jax.random.permutation(key, target.shape[0])]
  if styles.shape[1:3] != source.shape[1:3]:
    styles = jax.image.resize(styles, (styles.shape[0], *source.shape[1:3], styles.shape[3]), 'bilinear')
  return styles


def pseudo_data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.data with the target's raw folder replaced by the pseudo-labelled folder `selftrain.pseudo_dir`."""
  if config.data.target != 'cityscapes':
    raise ValueError(f'Self-training reads a Cityscapes-layout pseudo-labelled folder, but config.data.target is '
                     f'{config.data.target!r}; set config.data.target=cityscapes.')
  data = config.data.copy_and_resolve_references()
  data.cityscapes_dir = config.selftrain.pseudo_dir
  return data


@base.register('fda')
class FDA(base.Method):
  domains = ('source', 'target')

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    f = config.fda
    if f.window not in WINDOWS:
      raise ValueError(f'config.fda.window={f.window!r}: choose one of {WINDOWS}.')
    if not 0.0 <= f.beta < 0.5:
      raise ValueError(f'config.fda.beta={f.beta}: choose a value in [0, 0.5) (FDA uses 0.01, 0.05, 0.09).')
    self.augment = augment.batched(augment.build(config.train.augment))
    self.seg_loss = supervised.segmentation_loss_fn(self)
    st = config.get('selftrain')
    self.pseudo_dir = st.pseudo_dir if st is not None else None
    self.pseudo_weight = float(st.pseudo_weight) if st is not None else 0.0
    self.lr_schedule = base.learning_rate_schedule(config.train)

  def train_data(self, domain: str) -> tuple[ml_collections.ConfigDict, str]:
    if domain == 'target' and self.pseudo_dir:
      return pseudo_data_config(self.config), self.config.data.target
    return super().train_data(domain)

  def init(self, key: jax.Array, shapes: dict[str, tuple[int, int]]) -> supervised.SupervisedState:
    init_key, step_key = jax.random.split(key)
    return supervised.SupervisedState(seg=supervised.init_segmentation_state(self, init_key, shapes['source']),
                                      key=step_key)

  def train_step(self, state: supervised.SupervisedState,
                 batch: base.Batch) -> tuple[supervised.SupervisedState, base.Metrics]:
    f = self.config.fda
    key = jax.random.fold_in(state.key, state.step)
    perm_key, src_key, tgt_key = jax.random.split(key, 3)
    src = base.to_float_images(batch['source']['image'])  # [B, H, W, 3] 0..255
    tgt = base.to_float_images(batch['target']['image'])
    src = low_frequency_swap(src, style_targets(perm_key, src, tgt), f.beta, f.window)
    src_images, src_labels = self.augment(src_key, src, base.to_labels(batch['source']['label']))
    tgt_images, tgt_labels = self.augment(tgt_key, tgt, base.to_labels(batch['target']['label']))
    ent_on = (state.step >= f.entropy_start_step).astype(jnp.float32)

    def loss_fn(params):
      src_out, stats = supervised.apply_train(state.seg, params, src_images)
      tgt_out, stats = supervised.apply_train(state.seg.replace(batch_stats=stats), params, tgt_images)
      seg_total, parts = self.seg_loss(src_out, src_labels)
      ent = losses.fda_entropy_penalty(tgt_out['logits'], f.entropy_eta)
      total = seg_total + ent_on * f.entropy_weight * ent
      parts = {**parts, 'loss_ent': ent}
      if self.pseudo_dir:  # the target labels are pseudo-labels only here; ground truth is never read
        pseudo_total, pseudo_parts = self.seg_loss(tgt_out, tgt_labels)
        total = total + self.pseudo_weight * pseudo_total
        parts['loss_pseudo'] = pseudo_parts['loss_seg']
      return total, (stats, parts)

    (total, (stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.seg.params)
    seg = state.seg.apply_gradients(grads=grads, batch_stats=stats)
    metrics = {'loss': total, **parts, 'lr': self.lr_schedule(state.step)}
    return state.replace(seg=seg), metrics
