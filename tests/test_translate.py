"""The learned translator (CycleGAN + CyCADA's semantic loss) and --mode=translate: the networks against a PyTorch
re-statement of the reference's, the history pool against a brute-force image_pool.py, the schedule against
CycleGAN's lambda rule, four states that never leak into each other and a frozen segmentation net that never
changes, the generators' gradient through the frozen nets against a hand-built one, 1 vs 8 devices, exact resume,
and the translated folder (labels byte for byte, images = G_st of the raw images) read back by the GTA5 builder."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from configs import translate as translate_config
from rtda_jax import app, errors, methods
from rtda_jax.data import builders
from rtda_jax.methods import translate
from rtda_jax.models import generator
from tests.trainer_utils import (TINY, TINY_MODEL, TinySeg, assert_trees_equal, override, random_batch,
                                 restore_params, steps_on_mesh, tiny_config)

SHAPE = (64, 64)
TINY_NETS = {'model.name': TINY_MODEL, 'translate.ngf': 4, 'translate.num_blocks': 1, 'translate.ndf': 4}


def make_config(**overrides):
  config = translate_config.get_config()
  override(config, {**TINY_NETS, 'train.augment': 'none', 'train.batch_size': 2,
                    'translate.init_from': 'never-loaded-by-these-unit-tests', 'translate.semantic_weight': 2.0,
                    'translate.semantic_target_weight': 0.5})
  return override(config, overrides)


def make_batch(batch_size=2, seed=0):
  return jax.tree.map(jnp.asarray, random_batch(batch_size, SHAPE, seed))


def init(config, seed=0):
  method = methods.get_method(config)
  return method, method.init(jax.random.PRNGKey(seed), {'source': SHAPE, 'target': SHAPE})


def one_step(config, batch, state=None):
  """(method, old, new, metrics) on the host, from PRNGKey(0)'s state unless one is given."""
  method, fresh = init(config)
  state = fresh if state is None else state
  old = jax.device_get(state)
  new, metrics = jax.jit(method.train_step)(state, batch)
  return method, old, jax.device_get(new), jax.device_get(metrics)


def assert_trees_close(got, want, rel=1e-4):
  """Leaf by leaf within rel x the largest magnitude of `want`. Both sides compute the same float32 function by
  different XLA programs (fusion and reduction order differ): a sum of n terms then differs by about sqrt(n) x 6e-8
  of its terms' scale, n <= 64 x 64 x 2 x 64 here, i.e. ~3e-5 of the scale; 1e-4 leaves a margin. The scale is the
  whole tree's so that leaves whose true value is 0 (biases before instance norm) are compared at the tree's
  precision, not their own rounding noise."""
  scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(want))
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves_with_path(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=rel * scale, err_msg=str(path))


# ---- the networks against a PyTorch re-statement of the reference ---------------------------------------------------


def _torch_generator(torch, ngf, num_blocks, upsample):
  """models/networks.py's ResnetGenerator (instance norm, reflect padding, no dropout), written out."""
  tnn = torch.nn

  class Block(tnn.Module):
    def __init__(self, dim):
      super().__init__()
      self.body = tnn.Sequential(tnn.ReflectionPad2d(1), tnn.Conv2d(dim, dim, 3), tnn.InstanceNorm2d(dim), tnn.ReLU(),
                                 tnn.ReflectionPad2d(1), tnn.Conv2d(dim, dim, 3), tnn.InstanceNorm2d(dim))

    def forward(self, x):
      return x + self.body(x)

  layers = [tnn.ReflectionPad2d(3), tnn.Conv2d(3, ngf, 7), tnn.InstanceNorm2d(ngf), tnn.ReLU()]
  for mult in (1, 2):
    layers += [tnn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1), tnn.InstanceNorm2d(ngf * mult * 2),
               tnn.ReLU()]
  layers += [Block(ngf * 4) for _ in range(num_blocks)]
  for mult in (4, 2):
    if upsample == 'transpose':
      layers += [tnn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1)]
    else:
      layers += [tnn.Upsample(scale_factor=2, mode='bilinear', align_corners=False), tnn.ReflectionPad2d(1),
                 tnn.Conv2d(ngf * mult, ngf * mult // 2, 3)]
    layers += [tnn.InstanceNorm2d(ngf * mult // 2), tnn.ReLU()]
  layers += [tnn.ReflectionPad2d(3), tnn.Conv2d(ngf, 3, 7), tnn.Tanh()]
  return tnn.Sequential(*layers)


def _torch_discriminator(torch, ndf, num_layers):
  """models/networks.py's NLayerDiscriminator with instance norm, written out."""
  tnn = torch.nn
  layers = [tnn.Conv2d(3, ndf, 4, 2, 1), tnn.LeakyReLU(0.2)]
  prev = 1
  for n in range(1, num_layers + 1):
    mult = min(2 ** n, 8)
    layers += [tnn.Conv2d(ndf * prev, ndf * mult, 4, 2 if n < num_layers else 1, 1), tnn.InstanceNorm2d(ndf * mult),
               tnn.LeakyReLU(0.2)]
    prev = mult
  layers += [tnn.Conv2d(ndf * prev, 1, 4, 1, 1)]
  return tnn.Sequential(*layers)


def _copy_weights(torch, flax_params, torch_module, transposed=()):
  """Flax convs (kernel [kh, kw, in, out]) in definition order onto the torch convs in module order. A flax
  ConvTranspose is a conv on the dilated input with the kernel as is; torch's ConvTranspose2d [in, out, kh, kw]
  is that conv with the kernel flipped in space."""
  convs = [m for m in torch_module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
  flat = [(name, p) for name, p in _ordered_convs(flax_params)]
  assert len(flat) == len(convs)
  for (name, p), m in zip(flat, convs):
    k = np.asarray(p['kernel'])
    w = k[::-1, ::-1].transpose(2, 3, 0, 1) if name in transposed else k.transpose(3, 2, 0, 1)
    m.weight.data = torch.from_numpy(np.ascontiguousarray(w))
    m.bias.data = torch.from_numpy(np.asarray(p['bias']))


def _ordered_convs(params):
  """(name, {'kernel', 'bias'}) of every conv in the order the modules were defined (flax keeps insertion order)."""
  for name, value in params.items():
    if 'kernel' in value:
      yield name, value
    else:
      for sub, p in _ordered_convs(value):
        yield f'{name}/{sub}', p


@pytest.mark.parametrize('upsample', generator.UPSAMPLE_MODES)
def test_generator_is_the_reference_resnet_generator(upsample):
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 24, 3)).astype(np.float32)
  gen = generator.ResnetGenerator(ngf=4, num_blocks=2, upsample=upsample)
  params = gen.init(jax.random.PRNGKey(0), x)['params']
  ref = _torch_generator(torch, 4, 2, upsample)
  _copy_weights(torch, params, ref, transposed=('up0', 'up1') if upsample == 'transpose' else ())
  got = np.asarray(gen.apply({'params': params}, x))
  with torch.no_grad():
    want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  assert got.shape == x.shape
  # ~15 float32 layers, each rounding ~sqrt(7*7*16) x 6e-8 of its normalised O(1) activations: ~3e-5 in all.
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_patch_discriminator_is_the_reference_70x70_patchgan():
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(1).uniform(-1, 1, (2, 40, 48, 3)).astype(np.float32)
  disc = generator.PatchDiscriminator(ndf=4, num_layers=3)
  params = disc.init(jax.random.PRNGKey(1), x)['params']
  ref = _torch_discriminator(torch, 4, 3)
  _copy_weights(torch, params, ref)
  got = np.asarray(disc.apply({'params': params}, x))
  with torch.no_grad():
    want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  assert got.shape == (2, generator.patch_output_size(40), generator.patch_output_size(48), 1) == want.shape
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)  # 5 layers; outputs O(0.1): as above


def test_generator_rejects_sizes_that_are_not_multiples_of_4():
  gen = generator.ResnetGenerator(ngf=4, num_blocks=1)
  with pytest.raises(ValueError, match='multiples of 4'):
    gen.init(jax.random.PRNGKey(0), jnp.zeros((1, 30, 32, 3)))


# ---- the history pool, the schedule ---------------------------------------------------------------------------------


def reference_query(stored: list, images, p, slots, pool_size):
  """util/image_pool.py's ImagePool.query, with its random.uniform / random.randint draws given."""
  out = []
  for image, p_i, slot in zip(images, p, slots):
    if len(stored) < pool_size:
      stored.append(image)
      out.append(image)
    elif p_i > 0.5:
      out.append(stored[slot])
      stored[slot] = image
    else:
      out.append(image)
  return out


def test_history_pool_behaves_like_image_pool_py():
  pool_size, batch = 5, 3
  pool = translate.empty_pool(pool_size, (2, 2))
  query = jax.jit(translate.query_pool)
  stored, swaps = [], 0
  for q in range(12):
    key = jax.random.PRNGKey(q)
    images = (np.arange(batch, dtype=np.float32)[:, None, None, None] + 10 * q) * np.ones((batch, 2, 2, 3), np.float32)
    p, slots = jax.device_get(translate.pool_draws(key, batch, pool_size))
    assert slots.min() >= 0 and slots.max() < pool_size
    want = reference_query(stored, list(images), p, slots, pool_size)
    pool, got = query(pool, jnp.asarray(images), key)
    np.testing.assert_array_equal(np.asarray(got), np.stack(want))
    assert int(pool.count) == len(stored)
    np.testing.assert_array_equal(np.asarray(pool.images)[:len(stored)], np.stack(stored))
    swaps += int(sum(not np.array_equal(a, b) for a, b in zip(np.asarray(got), images)))
  assert swaps > 0  # the full pool did hand back older fakes


def test_pool_size_0_is_no_pool():
  assert translate.empty_pool(0, SHAPE) is None
  images = jnp.ones((2, 4, 4, 3))
  pool, out = translate.query_pool(None, images, jax.random.PRNGKey(0))
  assert pool is None and out is images


def test_schedule_is_cyclegans_linear_policy():
  constant, decay, lr = 3, 4, 2e-4
  schedule = translate.cyclegan_schedule(lr, constant, decay)
  # networks.get_scheduler: lambda_rule(epoch) = 1 - max(0, epoch + epoch_count - n_epochs) / (n_epochs_decay + 1),
  # epoch_count = 1, with epochs read as steps.
  want = [lr * (1.0 - max(0, step + 1 - constant) / float(decay + 1)) for step in range(constant + decay)]
  got = [float(schedule(step)) for step in range(constant + decay)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert float(schedule(constant + decay + 5)) == 0.0


# ---- four states, a frozen net --------------------------------------------------------------------------------------


def test_the_segmentation_net_is_frozen_and_has_no_optimiser_state():
  config = make_config()
  method, state = init(config)
  old = jax.device_get(state)
  step = jax.jit(method.train_step)
  for seed in range(3):
    state, _ = step(state, make_batch(seed=seed))
  new = jax.device_get(state)
  assert_trees_equal(old.seg.params, new.seg.params)
  assert_trees_equal(old.seg.batch_stats, new.seg.batch_stats)
  assert int(new.seg.step) == 0 and jax.tree.leaves(new.seg.opt_state) == []
  assert int(new.step) == 3


def hand_built_losses(config, old, batch):
  """The losses of the module docstring written out with the modules and optax, every other net a constant."""
  t = config.translate
  gen, disc, seg = generator.ResnetGenerator(4, 1), generator.PatchDiscriminator(4), TinySeg(19)
  xs = jnp.asarray(batch['source']['image'], jnp.float32) / 127.5 - 1
  xt = jnp.asarray(batch['target']['image'], jnp.float32) / 127.5 - 1
  ys = jnp.asarray(batch['source']['label'], jnp.int32)
  g = lambda p, x: gen.apply({'params': p}, x)
  d = lambda p, x: disc.apply({'params': p}, x)
  f = lambda x: seg.apply(old.seg.variables, (x + 1) * 127.5, train=False)['logits']
  ce = lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  l1 = lambda a, b: jnp.mean(jnp.abs(a - b))

  def generator_loss(params):
    p_st, p_ts = params
    fake_t, fake_s = g(p_st, xs), g(p_ts, xt)
    adv = jnp.mean((d(old.d_t.params, fake_t) - 1) ** 2) + jnp.mean((d(old.d_s.params, fake_s) - 1) ** 2)
    cycle = t.cycle_weight * (l1(g(p_ts, fake_t), xs) + l1(g(p_st, fake_s), xt))
    ident = t.identity_weight * t.cycle_weight * (l1(g(p_st, xt), xt) + l1(g(p_ts, xs), xs))
    sem = t.semantic_weight * ce(f(fake_t), ys)
    sem_t = t.semantic_target_weight * ce(f(fake_s), jnp.argmax(f(xt), -1))
    return adv + cycle + ident + sem + sem_t

  def disc_loss(params, real, fake):
    return 0.5 * (jnp.mean((d(params, real) - 1) ** 2) + jnp.mean(d(params, fake) ** 2))

  # The pools are empty at step 0: the discriminators see this step's fakes.
  fake_t, fake_s = g(old.g_st.params, xs), g(old.g_ts.params, xt)
  return generator_loss, lambda p: disc_loss(p, xs, fake_s), lambda p: disc_loss(p, xt, fake_t)


def test_generator_gradient_through_the_frozen_nets_equals_a_hand_built_one():
  """Each network's gradient is that of its own loss, the other networks held constant: with
  test_each_state_takes_adam_steps_of_its_own_gradient, no state is moved by another's loss (states never leak)."""
  config, batch = make_config(), make_batch()
  method, state = init(config)
  old = jax.device_get(state)
  gradients = jax.jit(method.gradients)
  grads, _, metrics = jax.device_get(gradients(state, batch))
  generator_loss, d_s_loss, d_t_loss = hand_built_losses(config, old, batch)
  # jit: one compilation of each hand-built function instead of op-by-op dispatch (the same arithmetic).
  loss, (g_st, g_ts) = jax.jit(jax.value_and_grad(generator_loss))((old.g_st.params, old.g_ts.params))
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  assert_trees_close(grads['g_st'], g_st)
  assert_trees_close(grads['g_ts'], g_ts)
  # ... each discriminator's gradient is of its own loss only (detached fakes, real images of its domain).
  assert_trees_close(grads['d_s'], jax.jit(jax.grad(d_s_loss))(old.d_s.params))
  assert_trees_close(grads['d_t'], jax.jit(jax.grad(d_t_loss))(old.d_t.params))
  # ... the semantic terms are a visible part of the generators' gradient, through the frozen segmentation net:
  # another segmentation net changes it, and without the terms the segmentation net does not matter.
  other_seg = state.replace(seg=method.init(jax.random.PRNGKey(1), {'source': SHAPE, 'target': SHAPE}).seg)
  kernel = lambda g: np.asarray(g['g_st']['conv_out']['kernel'])
  scale = np.abs(kernel(grads)).max()
  assert np.abs(kernel(jax.device_get(gradients(other_seg, batch)[0])) - kernel(grads)).max() > 1e-2 * scale
  no_sem = make_config(**{'translate.semantic_weight': 0.0, 'translate.semantic_target_weight': 0.0})
  gradients_no_sem = jax.jit(methods.get_method(no_sem).gradients)
  grads_no_sem = jax.device_get(gradients_no_sem(state, batch)[0])
  assert np.abs(kernel(grads_no_sem) - kernel(grads)).max() > 1e-2 * scale
  assert_trees_equal(jax.device_get(gradients_no_sem(other_seg, batch)[0]), grads_no_sem)


def test_each_state_takes_adam_steps_of_its_own_gradient():
  # Different rates for generators and discriminators, so a swap of their schedules shows.
  config, batch = make_config(**{'translate.disc_learning_rate': 1e-4}), make_batch()
  method, state = init(config)
  old = jax.device_get(state)
  grads, _, _ = jax.device_get(jax.jit(method.gradients)(state, batch))
  _, _, new, _ = one_step(config, batch)
  t = config.translate
  for name, lr in (('g_st', t.learning_rate), ('g_ts', t.learning_rate), ('d_s', t.disc_learning_rate),
                   ('d_t', t.disc_learning_rate)):
    tx = optax.adam(lr, b1=0.5, b2=0.999)  # CycleGAN: Adam(lr, betas=(0.5, 0.999)), eps 1e-8
    params = getattr(old, name).params
    updates, _ = tx.update(grads[name], tx.init(params))
    # The same gradient through the same Adam arithmetic: equal but for the last float32 bit of each update.
    assert_trees_equal(optax.apply_updates(params, updates), getattr(new, name).params, atol=1e-3 * lr)


def test_semantic_loss_without_a_frozen_net_is_a_clear_error():
  with pytest.raises(errors.ConfigError, match='translate.init_from'):
    methods.get_method(make_config(**{'translate.init_from': None}))
  methods.get_method(make_config(**{'translate.init_from': None, 'translate.semantic_weight': 0.0,
                                    'translate.semantic_target_weight': 0.0}))


def test_training_past_the_schedule_is_a_clear_error():
  with pytest.raises(errors.ConfigError, match='translate.decay_steps'):
    methods.get_method(make_config(**{'train.num_steps': 1000}))


def test_one_and_eight_devices_give_the_same_step():
  config = make_config(**{'train.batch_size': 8, 'translate.pool_size': 6})
  batch = jax.device_get(make_batch(8))
  (state1, m1), (state8, m8) = (steps_on_mesh(config, n, batch, SHAPE) for n in (1, 8))
  for k in ('loss', 'loss_disc_s', 'loss_disc_t'):
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-4, err_msg=k)
  # The second query fills the pool (6 of 8 images) in batch order on both meshes.
  assert int(state1.pool_t.count) == int(state8.pool_t.count) == 6
  np.testing.assert_allclose(state1.pool_t.images, state8.pool_t.images, atol=1e-4)


# ---- presets --------------------------------------------------------------------------------------------------------

# CycleGAN (junyanz/pytorch-CycleGAN-and-pix2pix): options/base_options.py (ngf, ndf 64, netG resnet_9blocks,
# n_layers_D 3, batch_size 1, crop_size 256), options/train_options.py (n_epochs 100, n_epochs_decay 100, beta1 0.5,
# lr 0.0002, gan_mode lsgan, pool_size 50, lr_policy linear), models/cycle_gan_model.py (lambda_A = lambda_B = 10,
# lambda_identity 0.5); CyCADA (jhoffman/cycada_release) cyclegan/train_gta2cityscapes.sh (loadSize 1024 with
# scale_width, fineSize 400, lambda_identity 1.0).
PAPER = {'translate.ngf': 64, 'translate.ndf': 64, 'translate.num_blocks': 9, 'translate.disc_layers': 3,
         'train.batch_size': 1, 'data.source_train_size': (256, 256), 'data.target_train_size': (256, 256),
         'translate.constant_steps': 100 * 24966, 'translate.decay_steps': 100 * 24966,
         'train.num_steps': 200 * 24966, 'translate.betas': (0.5, 0.999), 'translate.learning_rate': 2e-4,
         'translate.disc_learning_rate': 2e-4, 'translate.gan': 'ls', 'translate.pool_size': 50,
         'translate.cycle_weight': 10.0, 'translate.identity_weight': 0.5, 'data.gta5_size': (562, 1024),
         'data.cityscapes_size': (512, 1024)}
CYCADA = {**PAPER, 'data.source_train_size': (400, 400), 'data.target_train_size': (400, 400),
          'translate.identity_weight': 1.0}


def _field(config, dotted):
  for part in dotted.split('.'):
    config = config[part]
  return tuple(config) if isinstance(config, (list, tuple)) else config


@pytest.mark.parametrize('preset, table', [('paper', PAPER), ('paper,cycada', CYCADA)])
def test_paper_presets_are_the_references(preset, table):
  config = translate_config.get_config(preset)
  for key, want in table.items():
    assert _field(config, key) == want, key


@pytest.mark.parametrize('preset', ['', 'nosem', 'semtarget', 'paper', 'paper,cycada', 'deeplabv2', 'nosem,paper'])
def test_advertised_preset_builds_and_traces_one_train_step(preset):
  config = translate_config.get_config(preset or None)
  if config.translate.semantic_weight > 0 and not config.translate.init_from:
    config.translate.init_from = 'runs/unused'  # the paper presets need one named (tested above)
  method = methods.get_method(config)
  shapes = {'source': (64, 64), 'target': (64, 64)}  # the preset's networks at small shapes
  state = jax.eval_shape(lambda key: method.init(key, shapes), jax.random.PRNGKey(0))
  b = config.train.batch_size
  batch = {d: {'image': jax.ShapeDtypeStruct((b, *shapes[d], 3), jnp.uint8),
               'label': jax.ShapeDtypeStruct((b, *shapes[d]), jnp.uint8)} for d in method.domains}
  new_state, metrics = jax.eval_shape(method.train_step, state, batch)
  assert jax.tree.structure(new_state) == jax.tree.structure(state) and 'loss' in metrics


def test_unknown_preset_names_the_presets():
  with pytest.raises(ValueError, match='nosem.*semtarget.*paper'):
    translate_config.get_config('nosemantic')


# ---- end to end: train, resume, --mode=translate, train on the translated folder ------------------------------------


def translate_tiny(root, **overrides):
  return tiny_config(root, 'translate', **{**TINY_NETS, 'translate.pool_size': 3, **overrides})


@pytest.fixture(scope='module')
def source_run(data_root, tmp_path_factory):
  """A tiny source-only run: the frozen net of the translator."""
  workdir = str(tmp_path_factory.mktemp('source'))
  app.run(tiny_config(data_root, **{'model.name': TINY_MODEL}), workdir=workdir)
  return workdir


@pytest.fixture(scope='module')
def translator_run(data_root, source_run, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('translator'))
  result = app.run(translate_tiny(data_root, **{'translate.init_from': source_run}), workdir=workdir)
  return workdir, result


def test_translator_run_resumes_bit_for_bit_and_keeps_the_frozen_net(data_root, source_run, translator_run,
                                                                      tmp_path):
  straight, result = translator_run
  resumed = str(tmp_path / 'resumed')
  config = lambda **o: translate_tiny(data_root, **{'translate.init_from': source_run, **o})
  app.run(config(**{'train.stop_after_steps': 3}), workdir=resumed)
  assert int(restore_params(resumed)['pool_t']['count']) == 3  # full (6 fakes offered) before the stop
  app.run(config(), workdir=resumed)
  a, b = restore_params(straight), restore_params(resumed)
  assert set(a) == {'g_st', 'g_ts', 'd_s', 'd_t', 'seg', 'pool_s', 'pool_t', 'key'}
  assert_trees_equal(a, b)
  # The frozen net is the source-only run's, bit for bit, after 6 steps; the trainer evaluated nothing.
  source = restore_params(source_run)['seg']
  assert_trees_equal(a['seg']['params'], source['params'])
  assert_trees_equal(a['seg']['batch_stats'], source['batch_stats'])
  assert result is None and not os.path.exists(os.path.join(straight, 'eval.json'))
  assert not os.path.exists(os.path.join(straight, 'eval_init.json'))


def _generator_output(params, images, pad_to_4=False):
  """G_st by hand: uint8 [B, H, W, 3] -> uint8, reflection-padded at the bottom/right to multiples of 4 first."""
  x = images.astype(np.float32) / 127.5 - 1
  h, w = x.shape[1:3]
  if pad_to_4:
    x = np.pad(x, ((0, 0), (0, -h % 4), (0, -w % 4), (0, 0)), mode='reflect')
  y = generator.ResnetGenerator(4, 1).apply({'params': params}, x)[:, :h, :w]
  return np.clip(np.round((np.asarray(y) + 1) * 127.5), 0, 255).astype(np.uint8)


def _assert_translated(got, want):
  # The same float32 function through two XLA programs (other batch sizes): a value within ~1e-5 of a .5 rounding
  # boundary may round the other way, by 1, on very few pixels.
  diff = np.abs(got.astype(int) - want.astype(int))
  assert diff.max() <= 1 and (diff == 0).mean() > 0.999, (diff.max(), (diff == 0).mean())


def _raw_gta5(root):
  return os.path.join(root, 'synthetic', 'gta5')


def test_translate_mode_writes_a_gta5_folder_that_trains(data_root, translator_run, tmp_path):
  workdir, _ = translator_run
  out = str(tmp_path / 'translated')
  config = translate_tiny(data_root, **{'translate.init_from': 'unused', 'translate.output_dir': out})
  info = app.run(config, workdir=workdir, mode='translate')
  assert info['num_images'] == 16 and info['step'] == 6
  raw = _raw_gta5(data_root)
  names = sorted(os.listdir(os.path.join(raw, 'images')))
  assert sorted(os.listdir(os.path.join(out, 'images'))) == names == sorted(os.listdir(os.path.join(out, 'labels')))
  params = restore_params(workdir)['g_st']['params']
  for name in names:
    with open(os.path.join(raw, 'labels', name), 'rb') as f, open(os.path.join(out, 'labels', name), 'rb') as g:
      assert f.read() == g.read(), name
    original = np.asarray(Image.open(os.path.join(raw, 'images', name)).convert('RGB'))
    translated = np.asarray(Image.open(os.path.join(out, 'images', name)))
    assert translated.shape == original.shape == (*TINY, 3)
    _assert_translated(translated, _generator_output(params, original[None])[0])
  assert len(os.listdir(os.path.join(workdir, 'translate_samples'))) == 3
  # The folder is a GTA5 folder: a source-only run builds it and trains on it.
  train = tiny_config(data_root, **{'model.name': TINY_MODEL, 'data.gta5_dir': out})
  result = app.run(train, workdir=str(tmp_path / 'on_translated'))
  assert result['num_images'] == 8
  assert builders.data_dir_for(train.data, 'gta5').endswith(builders.source_key(out))  # built from that folder
  assert builders.load_builder(train.data, 'gta5').info.splits['train'].num_examples == 16


def test_translate_mode_pads_odd_sizes_and_keeps_raw_sizes(translator_run, tmp_path):
  workdir, _ = translator_run
  root = str(tmp_path / 'odd')  # a benchmark whose raw GTA5 images are 62x66: not multiples of 4
  odd = {'translate.init_from': 'unused', 'data.synthetic.gta5_size': (62, 66)}
  out = str(tmp_path / 'raw_size')
  app.run(translate_tiny(root, **odd, **{'translate.inference_size': 'raw', 'translate.output_dir': out}),
          workdir=workdir, mode='translate')
  params = restore_params(workdir)['g_st']['params']
  names = sorted(os.listdir(os.path.join(_raw_gta5(root), 'images')))
  originals = np.stack([np.asarray(Image.open(os.path.join(_raw_gta5(root), 'images', n)).convert('RGB'))
                        for n in names[:4]])
  translated = np.stack([np.asarray(Image.open(os.path.join(out, 'images', n))) for n in names[:4]])
  assert translated.shape == originals.shape == (4, 62, 66, 3)
  _assert_translated(translated, _generator_output(params, originals, pad_to_4=True))
  # 'stored': translated at the stored 64x64, written back at the raw 62x66 so that the copied label still fits.
  stored = str(tmp_path / 'stored_size')
  app.run(translate_tiny(root, **odd, **{'translate.output_dir': stored}), workdir=workdir, mode='translate')
  for n in names:
    with Image.open(os.path.join(stored, 'images', n)) as im, Image.open(os.path.join(stored, 'labels', n)) as lab:
      assert im.size == lab.size == (66, 62)


def test_translate_mode_needs_a_trained_translator(data_root, tmp_path):
  with pytest.raises(errors.MissingFileError, match='train the translator first'):
    app.run(translate_tiny(data_root, **{'translate.init_from': 'unused'}), workdir=str(tmp_path / 'none'),
            mode='translate')
