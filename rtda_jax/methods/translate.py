"""Image-level adaptation with a learned translator: CycleGAN (Zhu et al. 2017) between the source and the target,
with CyCADA's semantic consistency (Hoffman et al. 2018).

Four networks, four TrainStates, one jitted step, as junyanz/pytorch-CycleGAN-and-pix2pix's cycle_gan_model.py:
- generators G_st (source -> target) and G_ts (target -> source) minimise, with both discriminators frozen,
    gan(D_t(G_st(x_s)), REAL) + gan(D_s(G_ts(x_t)), REAL)                                       (least squares)
  + lambda (|G_ts(G_st(x_s)) - x_s|_1 + |G_st(G_ts(x_t)) - x_t|_1)                              (cycle, lambda 10)
  + lambda_id lambda (|G_st(x_t) - x_t|_1 + |G_ts(x_s) - x_s|_1)                                 (identity, 0.5)
  + w_sem CE(f(G_st(x_s)), y_s)     (semantic: the frozen source-trained segmentation net f must still find the
                                     source labels in the translated image; CyCADA's loss_sem_AB)
  + w_sem_t CE(f(G_ts(x_t)), argmax f(x_t))   (CyCADA's loss_sem_BA, with the frozen net's own target labels; off
                                               by default)
- discriminators D_s, D_t minimise 0.5 (gan(D(real), REAL) + gan(D(fake), FAKE)), the fakes (detached) drawn from a
  50-image history of earlier fakes (image_pool.py), one pool per direction.
Both losses are computed from the state before the step (PyTorch's order: the generators step with the old
discriminators, the discriminators then see fakes made before that step). Separate Adam states per network equal the
reference's one Adam over both generators (and one over both discriminators): Adam is per parameter.

The frozen segmentation net is `state.seg`: its variables come from `translate.init_from` (the trainer's warm start,
`model.init_from`, which configs/translate.py ties to it); its optimiser is optax.set_to_zero and it is never updated.
Images enter the generators in [-1, 1] (x / 127.5 - 1) and the segmentation net in 0..255.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from rtda_jax import augment, errors, losses, models
from rtda_jax.methods import base
from rtda_jax.models import generator

REAL_LABEL = 1.0
FAKE_LABEL = 0.0


@flax.struct.dataclass
class HistoryPool:
  """image_pool.py's buffer as arrays: `images[:count]` are stored fakes; the rest are zeros not yet filled."""
  images: jax.Array  # [N, H, W, 3] float32 in [-1, 1]
  count: jax.Array  # int32 [], 0..N


@flax.struct.dataclass
class TranslateState:
  g_st: base.TrainState  # source -> target generator
  g_ts: base.TrainState  # target -> source generator
  d_s: base.TrainState  # judges source-domain images: real x_s vs G_ts(x_t)
  d_t: base.TrainState  # judges target-domain images: real x_t vs G_st(x_s)
  seg: base.TrainState  # the frozen segmentation net of the semantic loss (never updated)
  pool_s: HistoryPool | None  # fakes G_ts(x_t) for D_s; None when translate.pool_size = 0
  pool_t: HistoryPool | None  # fakes G_st(x_s) for D_t
  key: jax.Array

  @property
  def step(self) -> jax.Array:
    return self.g_st.step


# ---- the history pool ---------------------------------------------------------------------------------------------


def empty_pool(pool_size: int, image_shape: tuple[int, int]) -> HistoryPool | None:
  """An empty pool of `pool_size` images of [H, W] = image_shape (None when pool_size is 0: no buffer)."""
  if pool_size <= 0:
    return None
  return HistoryPool(images=jnp.zeros((pool_size, *image_shape, 3), jnp.float32), count=jnp.zeros((), jnp.int32))


def pool_draws(key: jax.Array, batch_size: int, pool_size: int) -> tuple[jax.Array, jax.Array]:
  """The random numbers of one query: p ~ U[0, 1) [B] and a slot ~ U{0 .. N-1} [B] int32 per image."""
  p_key, slot_key = jax.random.split(key)
  return (jax.random.uniform(p_key, (batch_size,)),
          jax.random.randint(slot_key, (batch_size,), 0, pool_size, dtype=jnp.int32))


def query_pool(pool: HistoryPool | None, images: jax.Array, key: jax.Array) -> tuple[HistoryPool | None, jax.Array]:
  """image_pool.py's `query`, image by image in batch order: while the pool is not full, store the image and return
  it; once full, with p > 0.5 return a stored image (a random slot) and put the new one in its place, else return
  the new image. images [B, H, W, 3] -> (pool, images [B, H, W, 3]); no pool returns the images unchanged."""
  if pool is None:
    return None, images
  size = pool.images.shape[0]
  p, slots = pool_draws(key, images.shape[0], size)

  def one(carry, inputs):
    stored, count = carry
    image, p_i, slot_i = inputs
    filling = count < size
    swap = jnp.logical_and(jnp.logical_not(filling), p_i > 0.5)
    slot = jnp.where(filling, count, slot_i)
    old = stored[slot]
    stored = stored.at[slot].set(jnp.where(jnp.logical_or(filling, swap), image, old))
    return (stored, count + filling.astype(jnp.int32)), jnp.where(swap, old, image)

  (stored, count), out = jax.lax.scan(one, (pool.images, pool.count), (images.astype(jnp.float32), p, slots))
  return HistoryPool(images=stored, count=count), out


# ---- schedule, losses ---------------------------------------------------------------------------------------------


def cyclegan_schedule(base_lr: float, constant_steps: int, decay_steps: int) -> optax.Schedule:
  """CycleGAN's 'linear' policy per step: base_lr for `constant_steps` updates, then
  base_lr * (1 - (t + 1 - constant_steps) / (decay_steps + 1)) for update t, reaching base_lr / (decay_steps + 1) at
  the last update of the decay phase and 0 after it (networks.get_scheduler's lambda_rule, epochs -> steps)."""
  def schedule(count):
    decayed = jnp.maximum(0, count + 1 - constant_steps) / (decay_steps + 1)
    return base_lr * jnp.maximum(0.0, 1.0 - decayed)
  return schedule


def to_gan_images(images: jax.Array) -> jax.Array:
  """float 0..255 [B, H, W, 3] -> [-1, 1] (CycleGAN's Normalize((0.5,) * 3, (0.5,) * 3))."""
  return images / 127.5 - 1.0


def to_pixels(images: jax.Array) -> jax.Array:
  """[-1, 1] -> float 0..255, what the segmentation models take."""
  return (images + 1.0) * 127.5


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean absolute difference (torch.nn.L1Loss), float32."""
  return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))


def build_generator(config: ml_collections.ConfigDict) -> generator.ResnetGenerator:
  t = config.translate
  return generator.ResnetGenerator(ngf=t.ngf, num_blocks=t.num_blocks, upsample=t.upsample,
                                   dtype=models.get_dtype(config.model.dtype))


def build_discriminator(config: ml_collections.ConfigDict) -> generator.PatchDiscriminator:
  t = config.translate
  return generator.PatchDiscriminator(ndf=t.ndf, num_layers=t.disc_layers, dtype=models.get_dtype(config.model.dtype))


def check_config(config: ml_collections.ConfigDict) -> None:
  """ConfigError naming the field for settings the translator cannot train with."""
  t = config.translate
  for domain in ('source', 'target'):
    h, w = config.data[f'{domain}_train_size']
    if h % 4 or w % 4:
      raise errors.ConfigError(f'config.data.{domain}_train_size={(h, w)}: the ResNet generator needs multiples of 4.')
  if (t.semantic_weight > 0 or t.semantic_target_weight > 0) and not t.get('init_from'):
    raise errors.ConfigError(
        'translate.semantic_weight > 0 needs the frozen segmentation net trained on the source: pass '
        '--config.translate.init_from=WORKDIR of a source-only run (e.g. runs/source_only, trained by '
        '`python main.py --config=configs/source_only.py`), or --config.translate.semantic_weight=0 '
        '--config.translate.semantic_target_weight=0 for plain CycleGAN.')
  if config.train.num_steps > t.constant_steps + t.decay_steps:
    raise errors.ConfigError(
        f'config.train.num_steps={config.train.num_steps} is past the end of the learning-rate schedule '
        f'(translate.constant_steps={t.constant_steps} + translate.decay_steps={t.decay_steps}): the last steps would '
        'train at rate 0. Lengthen the schedule or train fewer steps.')


@base.register('translate')
class Translate(base.Method):
  domains = ('source', 'target')
  evaluates_segmentation = False  # a translator: the trainer does not evaluate the (frozen) segmentation net

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    check_config(config)
    t = config.translate
    self.generator = build_generator(config)
    self.discriminator = build_discriminator(config)
    self.augment = augment.batched(augment.build(config.train.augment))
    self.gan = t.gan
    self.g_schedule = cyclegan_schedule(t.learning_rate, t.constant_steps, t.decay_steps)
    self.d_schedule = cyclegan_schedule(t.disc_learning_rate, t.constant_steps, t.decay_steps)

  def init(self, key: jax.Array, shapes: dict[str, tuple[int, int]]) -> TranslateState:
    g_st_key, g_ts_key, d_s_key, d_t_key, seg_key, step_key = jax.random.split(key, 6)
    t = self.config.translate
    dummy = jnp.zeros((1, 32, 32, 3), jnp.float32)  # parameters do not depend on the image size
    b1, b2 = t.betas
    g_tx = optax.adam(self.g_schedule, b1=b1, b2=b2)
    d_tx = optax.adam(self.d_schedule, b1=b1, b2=b2)
    make = lambda module, k, tx: base.create_train_state(module, dict(jax.jit(module.init)(k, dummy)), tx)
    seg_variables = jax.jit(self.init_variables, static_argnums=1)(seg_key, tuple(shapes['source']))
    return TranslateState(
        g_st=make(self.generator, g_st_key, g_tx), g_ts=make(self.generator, g_ts_key, g_tx),
        d_s=make(self.discriminator, d_s_key, d_tx), d_t=make(self.discriminator, d_t_key, d_tx),
        seg=base.create_train_state(self.model, seg_variables, optax.set_to_zero()),
        pool_s=empty_pool(t.pool_size, shapes['target']), pool_t=empty_pool(t.pool_size, shapes['source']),
        key=step_key)

  def segment(self, seg_variables: dict[str, Any], images: jax.Array) -> jax.Array:
    """Logits [B, H, W, C] of the frozen segmentation net (eval mode) on [-1, 1] images."""
    return self.model.apply(seg_variables, to_pixels(images), train=False)['logits']

  def generator_loss(self, g_params: tuple[Any, Any], state: TranslateState, xs: jax.Array, ys: jax.Array,
                     xt: jax.Array) -> tuple[jax.Array, tuple[dict[str, jax.Array], jax.Array, jax.Array]]:
    """The generators' loss (module docstring) with the discriminators and the segmentation net as constants;
    returns (total, (parts, fake_t, fake_s))."""
    t = self.config.translate
    p_st, p_ts = g_params
    g = lambda p, x: self.generator.apply({'params': p}, x)
    d_s_params, d_t_params = jax.lax.stop_gradient((state.d_s.params, state.d_t.params))
    seg_variables = jax.lax.stop_gradient(state.seg.variables)
    fake_t, fake_s = g(p_st, xs), g(p_ts, xt)  # [B, H, W, 3] each, in the other domain
    gan_st = losses.adversarial_loss(self.discriminator.apply({'params': d_t_params}, fake_t), REAL_LABEL, self.gan)
    gan_ts = losses.adversarial_loss(self.discriminator.apply({'params': d_s_params}, fake_s), REAL_LABEL, self.gan)
    cycle = t.cycle_weight * (l1(g(p_ts, fake_t), xs) + l1(g(p_st, fake_s), xt))
    zero = jnp.zeros((), jnp.float32)
    identity = semantic = semantic_target = zero
    if t.identity_weight > 0:
      identity = t.identity_weight * t.cycle_weight * (l1(g(p_st, xt), xt) + l1(g(p_ts, xs), xs))
    if t.semantic_weight > 0:
      semantic = t.semantic_weight * losses.cross_entropy(self.segment(seg_variables, fake_t), ys)
    if t.semantic_target_weight > 0:
      pseudo = jnp.argmax(self.segment(seg_variables, xt), axis=-1)  # [B, H, W]: the frozen net's own labels
      semantic_target = t.semantic_target_weight * losses.cross_entropy(self.segment(seg_variables, fake_s), pseudo)
    total = gan_st + gan_ts + cycle + identity + semantic + semantic_target
    parts = {'loss_gan_st': gan_st, 'loss_gan_ts': gan_ts, 'loss_cycle': cycle, 'loss_identity': identity,
             'loss_semantic': semantic, 'loss_semantic_target': semantic_target}
    return total, (parts, fake_t, fake_s)

  def discriminator_loss(self, params: Any, real: jax.Array, fake: jax.Array) -> jax.Array:
    """0.5 (gan(D(real), REAL) + gan(D(fake), FAKE)) on detached images."""
    d = lambda x: self.discriminator.apply({'params': params}, x)
    return 0.5 * (losses.adversarial_loss(d(real), REAL_LABEL, self.gan)
                  + losses.adversarial_loss(d(fake), FAKE_LABEL, self.gan))

  def inputs(self, state: TranslateState, batch: base.Batch) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(x_s [-1, 1], y_s train ids, x_t [-1, 1], the key of the pools) of this step (augmented)."""
    key = jax.random.fold_in(state.key, state.step)
    src_key, tgt_key, pool_key = jax.random.split(key, 3)
    xs, ys = self.augment(src_key, base.to_float_images(batch['source']['image']),
                          base.to_labels(batch['source']['label']))
    xt, _ = self.augment(tgt_key, base.to_float_images(batch['target']['image']),
                         base.to_labels(batch['target']['label']))
    return to_gan_images(xs), ys, to_gan_images(xt), pool_key

  def gradients(self, state: TranslateState, batch: base.Batch
                ) -> tuple[dict[str, Any], tuple[HistoryPool | None, HistoryPool | None], base.Metrics]:
    """Each network's gradient of its own loss ({'g_st', 'g_ts', 'd_s', 'd_t'}), the updated pools and the
    metrics; `train_step` applies them."""
    xs, ys, xt, pool_key = self.inputs(state, batch)
    (g_total, (parts, fake_t, fake_s)), (g_st_grads, g_ts_grads) = jax.value_and_grad(
        self.generator_loss, has_aux=True)((state.g_st.params, state.g_ts.params), state, xs, ys, xt)
    s_key, t_key = jax.random.split(pool_key)
    pool_s, fake_s = query_pool(state.pool_s, jax.lax.stop_gradient(fake_s), s_key)
    pool_t, fake_t = query_pool(state.pool_t, jax.lax.stop_gradient(fake_t), t_key)
    d_s_loss, d_s_grads = jax.value_and_grad(self.discriminator_loss)(state.d_s.params, xs, fake_s)
    d_t_loss, d_t_grads = jax.value_and_grad(self.discriminator_loss)(state.d_t.params, xt, fake_t)
    grads = {'g_st': g_st_grads, 'g_ts': g_ts_grads, 'd_s': d_s_grads, 'd_t': d_t_grads}
    metrics = {'loss': g_total, **parts, 'loss_disc_s': d_s_loss, 'loss_disc_t': d_t_loss,
               'lr': self.g_schedule(state.step)}
    return grads, (pool_s, pool_t), metrics

  def train_step(self, state: TranslateState, batch: base.Batch) -> tuple[TranslateState, base.Metrics]:
    grads, (pool_s, pool_t), metrics = self.gradients(state, batch)
    return state.replace(g_st=state.g_st.apply_gradients(grads=grads['g_st']),
                         g_ts=state.g_ts.apply_gradients(grads=grads['g_ts']),
                         d_s=state.d_s.apply_gradients(grads=grads['d_s']),
                         d_t=state.d_t.apply_gradients(grads=grads['d_t']),
                         pool_s=pool_s, pool_t=pool_t), metrics

  def translate(self, g_params: Any, images: jax.Array) -> jax.Array:
    """uint8 (or float 0..255) [B, H, W, 3] source images -> uint8 [B, H, W, 3] translated by G_st (H, W multiples
    of 4)."""
    out = self.generator.apply({'params': g_params}, to_gan_images(base.to_float_images(images)))
    return jnp.clip(jnp.round(to_pixels(out)), 0, 255).astype(jnp.uint8)
