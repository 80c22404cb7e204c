"""The presets: each reference preset's numbers against the reference table (data, with the file and line of each
number in the reference code), and every advertised preset combination builds its method and traces one train step.

The reference table here is written from the reference repositories, independently of configs/: a preset that drifts
from its reference fails here.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import pytest

from rtda_jax import methods, trainer
from rtda_jax.methods import base

# field -> value, per preset; where each number stands in the reference code.
REFERENCE_TABLE = {
    # wasidennis/AdaptSegNet train_gta2cityscapes_multi.py l.27-53; README's single-level command; evaluate_cityscapes.py
    ('adv', 'deeplabv2,paper'): {
        'train.batch_size': 1,  # BATCH_SIZE l.27
        'data.gta5_size': (720, 1280), 'data.source_train_size': (720, 1280),  # INPUT_SIZE '1280,720' l.33
        'data.cityscapes_size': (512, 1024), 'data.target_train_size': (512, 1024),  # INPUT_SIZE_TARGET l.36
        'data.resize_mode': 'resize', 'train.augment': 'none',  # no crop; --random-mirror/-scale off
        'train.learning_rate': 2.5e-4, 'train.head_lr_mult': 10.0,  # LEARNING_RATE l.37; optim_parameters x10
        'train.momentum': 0.9, 'train.weight_decay': 5e-4, 'train.poly_power': 0.9,  # l.38, l.48, l.42
        'train.schedule_steps': 250_000, 'train.num_steps': 150_000,  # NUM_STEPS l.40, NUM_STEPS_STOP l.41
        'adv.disc_learning_rate': 1e-4, 'adv.disc_betas': (0.9, 0.99),  # LEARNING_RATE_D l.50; Adam betas
        'adv.lambda_adv': 0.001, 'adv.level': 'single',  # LAMBDA_ADV_TARGET2 l.53
        'model.bn_mode': 'batch',  # BN requires_grad=False + model.train()
        'model.align_corners': True, 'eval.protocol': 'adaptsegnet', 'eval.input_size': (512, 1024),
        'eval.align_corners': True,
    },
    ('adv', 'deeplabv2,paper,multilevel'): {
        'adv.level': 'multi', 'model.multi_level': True,
        'train.aux_weight': 0.1, 'adv.lambda_adv_aux': 0.0002, 'adv.lambda_adv': 0.001,  # l.51-53
        'train.schedule_steps': 250_000, 'train.num_steps': 150_000, 'train.batch_size': 1,
    },
    # YanchaoYang/FDA options/train_options.py l.10-31, data/__init__.py l.10 and l.14-16, README's command
    ('fda', 'deeplabv2,paper'): {
        'train.batch_size': 1,  # l.24
        'train.schedule_steps': 150_000, 'train.num_steps': 100_000,  # l.25, l.26
        'train.learning_rate': 2.5e-4, 'train.momentum': 0.9, 'train.weight_decay': 5e-4,  # l.28-30
        'train.poly_power': 0.9,  # l.31
        'fda.entropy_weight': 0.005, 'fda.entropy_eta': 2.0, 'fda.entropy_start_step': 0,  # l.10, l.11; README
        'data.gta5_size': (720, 1280), 'data.source_train_size': (512, 1024),  # resize 1280x720, crop 1024x512
        'data.resize_mode': 'crop', 'data.cityscapes_size': (512, 1024), 'data.target_train_size': (512, 1024),
        'model.bn_mode': 'batch', 'eval.protocol': 'adaptsegnet', 'eval.align_corners': True,
    },
    # vikolss/DACS configs/configUDA.json l.6-38, trainUDA.py (gta 1280x720, cityscapes 1024x512; align_corners=True)
    ('dacs', 'deeplabv2,paper'): {
        'train.batch_size': 2,  # l.6
        'train.schedule_steps': 250_000, 'train.num_steps': 250_000,  # l.10
        'train.learning_rate': 2.5e-4, 'train.momentum': 0.9, 'train.weight_decay': 5e-4, 'train.poly_power': 0.9,
        'data.source_train_size': (512, 512), 'data.target_train_size': (512, 512),  # input_size l.20
        'data.resize_mode': 'crop', 'data.gta5_size': (720, 1280), 'data.cityscapes_size': (512, 1024),
        'dacs.consistency_weight': 1.0, 'dacs.pixel_weight': 'threshold_uniform',  # l.26, l.28
        'dacs.augment': 'strong',  # color_jitter, blur l.32-33
        'model.bn_mode': 'batch', 'eval.protocol': 'dacs', 'eval.input_size': (512, 1024), 'eval.align_corners': True,
    },
    # SYNTHIA -> Cityscapes (preset `synthia`): SYNTHIA resized to 1280x760 (AdaptSegNet's paper Sec. 5.2, same
    # schedule; YanchaoYang/FDA data/__init__.py l.10 image_sizes['synthia'], cropped to 1024x512; DACS's paper
    # Sec. 4.1 with 512x512 crops), Cityscapes as for GTA5.
    ('adv', 'deeplabv2,paper,synthia'): {
        'data.source': 'synthia', 'data.synthia_size': (760, 1280), 'data.source_train_size': (760, 1280),
        'data.cityscapes_size': (512, 1024), 'data.target_train_size': (512, 1024), 'data.resize_mode': 'resize',
        'train.batch_size': 1, 'train.schedule_steps': 250_000, 'train.num_steps': 150_000,
        'train.learning_rate': 2.5e-4, 'eval.protocol': 'adaptsegnet', 'eval.class_set': 'auto',
    },
    ('fda', 'deeplabv2,paper,synthia'): {
        'data.source': 'synthia', 'data.synthia_size': (760, 1280), 'data.source_train_size': (512, 1024),
        'data.resize_mode': 'crop', 'train.schedule_steps': 150_000, 'train.num_steps': 100_000,
    },
    ('dacs', 'deeplabv2,paper,synthia'): {
        'data.source': 'synthia', 'data.synthia_size': (760, 1280), 'data.source_train_size': (512, 512),
        'data.target_train_size': (512, 512), 'data.resize_mode': 'crop', 'train.batch_size': 2,
        'train.num_steps': 250_000,
    },
}

# The course setting (REFERENCES.md "Course setting for BiSeNet"): the same recipe in every config.
COURSE = {'model.name': 'bisenet', 'train.batch_size': 2, 'train.learning_rate': 2.5e-4 * 2,
          'data.resize_mode': 'crop', 'data.source_train_size': (512, 1024), 'data.target_train_size': (512, 1024),
          'data.gta5_size': (720, 1280), 'data.cityscapes_size': (512, 1024), 'eval.protocol': 'stored'}
COURSE_STEPS = {'source_only': 50 * 24966 // 2, 'oracle': 50 * 2975 // 2, 'adv': 50 * 24966 // 2,
                'fda': 50 * 24966 // 2, 'dacs': 50 * 24966 // 2}

# Every config with the presets its docstring and the README advertise (each combination below must build).
ADVERTISED = {
    'source_only': ['', 'bisenet', 'deeplabv2', 'paper', 'course', 'deeplabv2,paper', 'synthia', 'course,synthia'],
    'oracle': ['', 'bisenet', 'deeplabv2', 'paper', 'course', 'deeplabv2,paper'],
    'adv': ['', 'multilevel', 'feature', 'light', 'ls', 'deeplabv2', 'deeplabv2,multilevel', 'deeplabv2,feature',
            'paper', 'course', 'deeplabv2,paper', 'deeplabv2,paper,multilevel', 'multilevel,light,ls', 'synthia',
            'deeplabv2,paper,synthia'],
    'fda': ['', 'b001', 'b005', 'b009', 'mbt', 'b001,selftrain', 'deeplabv2', 'paper', 'course',
            'deeplabv2,paper', 'deeplabv2,b009,paper', 'deeplabv2,paper,synthia'],
    'dacs': ['', 'deeplabv2', 'paper', 'course', 'deeplabv2,paper', 'synthia', 'deeplabv2,paper,synthia'],
    'adabn': ['', 'deeplabv2'],
}


def get_config(name: str, preset: str):
  return importlib.import_module(f'configs.{name}').get_config(preset or None)


def field(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return tuple(config) if isinstance(config, (list, tuple)) else config


@pytest.mark.parametrize('name,preset', sorted(REFERENCE_TABLE))
def test_reference_preset_matches_the_reference_table(name, preset):
  config = get_config(name, preset)
  for key, expected in REFERENCE_TABLE[(name, preset)].items():
    got = field(config, key)
    assert got == pytest.approx(expected) if isinstance(expected, float) else got == expected, (key, got, expected)


@pytest.mark.parametrize('name', sorted(COURSE_STEPS))
@pytest.mark.parametrize('preset', ['course', 'bisenet,paper'])
def test_course_preset_is_one_recipe_for_every_config(name, preset):
  config = get_config(name, preset)
  for key, expected in COURSE.items():
    got = field(config, key)
    assert got == pytest.approx(expected) if isinstance(expected, float) else got == expected, (key, got, expected)
  assert config.train.num_steps == config.train.schedule_steps == COURSE_STEPS[name]
  if name == 'adv':
    assert config.adv.disc_learning_rate == pytest.approx(1e-4 * 2)


def test_fda_members_are_independent_runs():
  offsets = {b: get_config('fda', b).seed_offset for b in ('b001', 'b005', 'b009')}
  assert len(set(offsets.values())) == 3
  config = get_config('fda', 'b005')
  config.seed = 4
  assert trainer.run_seed(config) == 4 + offsets['b005']


def test_schedule_horizon_is_separate_from_the_steps_run():
  config = get_config('adv', 'deeplabv2,paper')
  schedule = base.learning_rate_schedule(config.train)
  # poly over 250k: at the stop (150k) the rate is 2.5e-4 * (1 - 0.6) ** 0.9, not 0.
  assert float(schedule(150_000)) == pytest.approx(2.5e-4 * 0.4 ** 0.9, rel=1e-5)


def test_unknown_preset_lists_the_configs_own_presets():
  with pytest.raises(ValueError, match='multilevel.*feature.*light.*ls.*bisenet'):
    get_config('adv', 'multilvel')
  with pytest.raises(ValueError, match='mbt.*selftrain.*b001'):
    get_config('fda', 'b01')


def test_multi_level_deeplab_without_its_layer3_head_is_a_clear_error():
  config = get_config('adv', 'deeplabv2')
  config.adv.level = 'multi'
  with pytest.raises(ValueError, match='model.multi_level=True'):
    methods.get_method(config)


def _shrink(config):
  """Tiny shapes (the preset's other numbers kept): stored 96x96, trained at 64x64 (the smallest size whose 1/32
  feature map still has more than one value per channel for BatchNorm at batch 1)."""
  d = config.data
  d.gta5_size = d.cityscapes_size = (96, 96)
  d.source_train_size = d.target_train_size = (64, 64)
  config.model.allow_random_init = True
  if config.method == 'adabn':
    config.model.init_from = 'runs/unused'
  return config


ALL = [(name, preset) for name, presets in ADVERTISED.items() for preset in presets]


@pytest.fixture
def shallow_deeplab(monkeypatch):
  """DeepLab-v2 on a ResNet-50 backbone instead of ResNet-101 in these trace tests: the same block type, widths
  and heads (what a preset's wiring meets), half the Python tracing of the 101 layers. test_models.py covers the
  ResNet-101 DeepLab-v2 itself."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from rtda_jax import models  # pylint: disable=g-import-not-at-top
  spec = models.MODELS['deeplabv2']
  monkeypatch.setitem(models.MODELS, 'deeplabv2',
                      dataclasses.replace(spec, build=lambda c: spec.build(c).clone(backbone_depth=50)))


@pytest.mark.parametrize('name,preset', ALL, ids=[f'{n}:{p or "default"}' for n, p in ALL])
def test_advertised_preset_builds_and_traces_one_train_step(name, preset, shallow_deeplab):
  config = _shrink(get_config(name, preset))
  trainer.check_initialisation(config)
  method = methods.get_method(config)
  shapes = base.train_shapes(config)
  state = jax.eval_shape(lambda key: method.init(key, shapes), jax.random.PRNGKey(0))
  b = max(1, config.train.batch_size)
  batch = {d: {'image': jax.ShapeDtypeStruct((b, *shapes[d], 3), jnp.uint8),
               'label': jax.ShapeDtypeStruct((b, *shapes[d]), jnp.uint8)} for d in method.domains}
  new_state, metrics = jax.eval_shape(method.train_step, state, batch)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert metrics  # every step reports something
