"""Adversarial domain adaptation (AdaptSegNet, Tsai et al. 2018): output-space, multi-level or feature-level.

Per step, one jitted function does both updates:
1. segmentation net: CE on the labelled source batch + sum_l lambda_l * adv(D_l(p_t^l), SOURCE) where p_t^l is the
   softmax of the target prediction at level l and D_l is frozen (its parameters are constants of this loss);
2. discriminators: 0.5 * adv(D_l(p_s^l), SOURCE) + 0.5 * adv(D_l(p_t^l), TARGET) on predictions detached from the
   segmentation net.
Two kinds of TrainState with their own optax optimisers (SGD + poly for the segmentation net, Adam (0.9, 0.99) +
poly for each discriminator); each is updated only by its own gradients.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from rtda_jax import augment, losses, models
from rtda_jax.methods import base, supervised

SOURCE_LABEL = 0.0
TARGET_LABEL = 1.0


@flax.struct.dataclass
class AdversarialState:
  seg: base.TrainState
  discs: tuple[base.TrainState, ...]  # one discriminator per adapted level
  key: jax.Array

  @property
  def step(self) -> jax.Array:
    return self.seg.step


def adapted_levels(config: ml_collections.ConfigDict) -> list[tuple[str, float]]:
  """[(output name, lambda_adv)]: which model outputs are adapted, and with which weight.

  Output names: 'logits' (main output), 'aux0', 'aux1' (auxiliary outputs: BiSeNet's context heads, DeepLab-v2's
  layer3 classifier), 'features' (backbone features, feature-level adaptation).
  """
  adv = config.adv
  if adv.level == 'single':
    return [('logits', adv.lambda_adv)]
  if adv.level == 'multi':
    if config.model.name == 'deeplabv2' and not config.model.get('multi_level'):
      raise ValueError("config.adv.level='multi' with DeepLab-v2 needs its layer3 classifier: set "
                       '--config.model.multi_level=True (the preset configs/adv.py:deeplabv2,multilevel does).')
    num_aux = 1 if config.model.name == 'deeplabv2' else 2
    return [('logits', adv.lambda_adv)] + [(f'aux{i}', adv.lambda_adv_aux) for i in range(num_aux)]
  if adv.level == 'feature':
    return [('features', adv.lambda_adv)]
  raise ValueError(f"config.adv.level={adv.level!r}: choose 'single', 'multi' or 'feature'.")


def level_input(outputs: dict[str, Any], level: str) -> jax.Array:
  """What the discriminator of `level` sees: softmax of the (input-resolution) logits, or the raw features."""
  if level == 'features':
    return outputs['features'].astype(jnp.float32)
  logits = outputs['logits'] if level == 'logits' else outputs['aux'][int(level[3:])]
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def discriminator_accuracy(out_source: jax.Array, out_target: jax.Array, gan: str) -> jax.Array:
  """Fraction of the discriminator's output cells (patches) classified right: source below the decision boundary
  (logit 0 for BCE, 0.5 for least squares), target above. 0.5 = chance: the domains are indistinguishable."""
  boundary = 0.0 if gan == 'bce' else 0.5 * (SOURCE_LABEL + TARGET_LABEL)
  right = jnp.concatenate([(out_source < boundary).reshape(-1), (out_target >= boundary).reshape(-1)])
  return jnp.mean(right.astype(jnp.float32))


def discriminator_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  adv = config.adv
  schedule = base.poly_schedule(adv.disc_learning_rate, base.schedule_horizon(config.train),
                                config.train.poly_power)
  return optax.adam(schedule, b1=adv.disc_betas[0], b2=adv.disc_betas[1])


@base.register('adversarial')
class Adversarial(base.Method):
  domains = ('source', 'target')

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.levels = adapted_levels(config)
    self.augment = augment.batched(augment.build(config.train.augment))
    self.seg_loss = supervised.segmentation_loss_fn(self)
    self.gan = config.adv.gan
    self.lr_schedule = base.learning_rate_schedule(config.train)

  def init(self, key: jax.Array, shapes: dict[str, tuple[int, int]]) -> AdversarialState:
    seg_key, disc_key, step_key = jax.random.split(key, 3)
    seg = supervised.init_segmentation_state(self, seg_key, shapes['source'])
    # Shapes of each level's discriminator input, from an abstract forward pass on the target shape.
    dummy = jax.ShapeDtypeStruct((1, *shapes['target'], 3), jnp.float32)
    outputs = jax.eval_shape(lambda x: self.model.apply(seg.variables, x, train=True, mutable=['batch_stats'])[0],
                             dummy)
    tx = discriminator_optimizer(self.config)
    discs = []
    for i, (level, _) in enumerate(self.levels):
      shape = jax.eval_shape(lambda o: level_input(o, level), outputs).shape
      # Backbone features are already 1/8-1/32 of the image: their discriminator keeps the resolution.
      disc = models.get_discriminator(self.config.adv.discriminator, shape[-1], self.config.model.dtype,
                                      downsample=level != 'features')
      variables = jax.jit(disc.init)(jax.random.fold_in(disc_key, i), jnp.zeros(shape, jnp.float32))
      discs.append(base.create_train_state(disc, variables, tx))
    return AdversarialState(seg=seg, discs=tuple(discs), key=step_key)

  def adversarial_weight(self, step: jax.Array) -> jax.Array:
    """0 during `adv.warmup_steps` (segmentation only), then 1."""
    return (step >= self.config.adv.warmup_steps).astype(jnp.float32)

  def train_step(self, state: AdversarialState, batch: base.Batch) -> tuple[AdversarialState, base.Metrics]:
    key = jax.random.fold_in(state.key, state.step)
    src_key, tgt_key = jax.random.split(key)
    src_images, src_labels = self.augment(src_key, base.to_float_images(batch['source']['image']),
                                          base.to_labels(batch['source']['label']))
    tgt_images, _ = self.augment(tgt_key, base.to_float_images(batch['target']['image']),
                                 base.to_labels(batch['target']['label']))
    adv_on = self.adversarial_weight(state.step)
    disc_params = [jax.lax.stop_gradient(d.params) for d in state.discs]  # frozen inside the seg loss

    def seg_loss_fn(params):
      src_out, stats = supervised.apply_train(state.seg, params, src_images)
      tgt_out, stats = supervised.apply_train(state.seg.replace(batch_stats=stats), params, tgt_images)
      seg_total, parts = self.seg_loss(src_out, src_labels)
      adv_losses = []
      for (level, lam), d, dp in zip(self.levels, state.discs, disc_params):
        d_out = d.apply_fn({'params': dp}, level_input(tgt_out, level))
        adv_losses.append(lam * losses.adversarial_loss(d_out, SOURCE_LABEL, self.gan))
      adv_total = adv_on * sum(adv_losses)
      inputs = [(jax.lax.stop_gradient(level_input(src_out, l)), jax.lax.stop_gradient(level_input(tgt_out, l)))
                for l, _ in self.levels]
      return seg_total + adv_total, (stats, parts, adv_total, inputs)

    (total, (stats, parts, adv_total, inputs)), grads = jax.value_and_grad(seg_loss_fn, has_aux=True)(
        state.seg.params)
    seg = state.seg.apply_gradients(grads=grads, batch_stats=stats)

    discs, disc_metrics = [], {}
    for i, (d, (p_src, p_tgt)) in enumerate(zip(state.discs, inputs)):
      def disc_loss_fn(params, d=d, p_src=p_src, p_tgt=p_tgt):
        out_src, out_tgt = d.apply_fn({'params': params}, p_src), d.apply_fn({'params': params}, p_tgt)
        loss = 0.5 * (losses.adversarial_loss(out_src, SOURCE_LABEL, self.gan)
                      + losses.adversarial_loss(out_tgt, TARGET_LABEL, self.gan))
        return loss, (out_src, out_tgt)
      (d_loss, (out_src, out_tgt)), d_grads = jax.value_and_grad(disc_loss_fn, has_aux=True)(d.params)
      # The discriminator trains from the first step; only the segmentation net's adversarial term waits.
      discs.append(d.apply_gradients(grads=d_grads))
      disc_metrics[f'loss_disc{i}'] = d_loss
      disc_metrics[f'disc_accuracy{i}'] = discriminator_accuracy(out_src, out_tgt, self.gan)
    metrics = {'loss': total, **parts, 'loss_adv': adv_total, **disc_metrics, 'lr': self.lr_schedule(state.step)}
    return state.replace(seg=seg, discs=tuple(discs)), metrics
