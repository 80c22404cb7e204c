"""SYNTHIA as the labelled source: the TFDS builder on a written SYNTHIA folder (train ids, the per-file errors,
data.unknown_label_ids), the embedded benchmark generated only for SYNTHIA runs, a short source-only run scored over
the 16 / 13 classes, and one traced train step of each adaptation method with data.source=synthia."""

from __future__ import annotations

import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import common
from rtda_jax import app, labels, methods, trainer
from rtda_jax.data import builders, pipeline, synthetic, synthia
from rtda_jax.methods import base
from tests.trainer_utils import TINY, TINY_MODEL, read_eval, tiny_config

RAW_HW = (16, 32)  # [H, W] of the written SYNTHIA images
STORED = (8, 16)  # [H, W] the builder stores (a 2x nearest downscale of the labels)
# SYNTHIA id -> Cityscapes train id as the 16-class protocol states it (valeoai/ESL advent/dataset/synthia.py,
# written out here independently of labels.SYNTHIA_LABELS); every other id 0..22 is ignore (255).
REFERENCE_16 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12, 8: 13, 19: 15,
                12: 17, 11: 18}


def independent_train_ids(ids: np.ndarray) -> np.ndarray:
  return np.vectorize(lambda v: REFERENCE_16.get(int(v), 255), otypes=[np.uint8])(ids)


def write_folder(root: str, n: int = 3) -> str:
  return synthetic.write_synthia(root, n, RAW_HW, seed=0, workers=1)


def decode(png: bytes) -> np.ndarray:
  return np.asarray(pipeline.decode_png(png, 'L'))


# ---- the builder ----------------------------------------------------------------------------------------------------


def test_builder_stores_the_train_ids_of_the_written_synthia_ids(tmp_path):
  raw = write_folder(str(tmp_path / 'raw'))
  b = builders.build('synthia', raw, str(tmp_path / 'tfds'), RAW_HW)
  source = b.as_data_source('train')
  pairs = synthia.list_pairs(raw)
  assert len(source) == len(pairs) == 3
  seen = set()
  for i, (image_path, label_path) in enumerate(pairs):
    record = source[i]
    assert record['name'].decode() == os.path.relpath(image_path, raw)
    ids = synthia.read_label(label_path)  # [H, W] uint16 SYNTHIA ids as written
    got = decode(record['label'])
    np.testing.assert_array_equal(got, independent_train_ids(ids))
    np.testing.assert_array_equal(np.asarray(pipeline.decode_png(record['image'], 'RGB')),
                                  np.asarray(Image.open(image_path).convert('RGB')))
    seen |= set(np.unique(got).tolist())
  assert len(seen - {255}) >= 5  # a real scene: several classes, so the comparison is not of all-ignore maps
  assert not seen & {9, 14, 16}  # terrain, truck and train are never SYNTHIA classes


def test_builder_resizes_labels_nearest(tmp_path):
  raw = write_folder(str(tmp_path / 'raw'), 1)
  b = builders.build('synthia', raw, str(tmp_path / 'tfds'), STORED)
  ids = synthia.read_label(synthia.list_pairs(raw)[0][1])
  # PIL's nearest 2x downscale samples the source pixel at floor((i + 0.5) * 2) = 2i + 1 along each axis.
  np.testing.assert_array_equal(decode(b.as_data_source('train')[0]['label']),
                                independent_train_ids(ids[1::2, 1::2]))


def test_missing_label_names_the_image(tmp_path):
  raw = write_folder(str(tmp_path / 'raw'), 2)
  label = os.path.join(raw, synthia.LABEL_DIR, '0000001.png')
  os.remove(label)
  with pytest.raises(builders.MissingDatasetError, match='0000001.png'):
    builders.build('synthia', raw, str(tmp_path / 'tfds'), STORED)


def test_size_mismatch_names_the_label(tmp_path):
  raw = write_folder(str(tmp_path / 'raw'), 2)
  label = os.path.join(raw, synthia.LABEL_DIR, '0000001.png')
  synthia.write_label(label, np.full((RAW_HW[0], RAW_HW[1] + 2), 3, np.uint16))
  with pytest.raises(builders.DatasetError, match=f'{label}.*is {RAW_HW[1] + 2}x{RAW_HW[0]}'):
    builders.build('synthia', raw, str(tmp_path / 'tfds'), STORED)


def test_unreadable_file_names_it(tmp_path):
  raw = write_folder(str(tmp_path / 'raw'), 2)
  image = os.path.join(raw, synthia.IMAGE_DIR, '0000000.png')
  with open(image, 'rb') as f:
    data = f.read()
  with open(image, 'wb') as f:
    f.write(data[:len(data) // 2])  # truncated: no IEND chunk
  with pytest.raises(builders.DatasetError, match=f'Cannot read {image!r}'):
    builders.build('synthia', raw, str(tmp_path / 'tfds'), STORED)


def test_ids_outside_the_table_name_the_file_or_become_ignore_on_request(tmp_path):
  raw = write_folder(str(tmp_path / 'raw'), 2)
  label = os.path.join(raw, synthia.LABEL_DIR, '0000001.png')
  ids = synthia.read_label(label).copy()
  ids[0, :3] = 40  # 40 is no SYNTHIA class (0..22)
  synthia.write_label(label, ids)
  with pytest.raises(builders.DatasetError, match=f'{label}.*40 \\(3 px\\).*SYNTHIA class ids'):
    builders.build('synthia', raw, str(tmp_path / 'tfds'), RAW_HW)
  b = builders.build('synthia', raw, str(tmp_path / 'tfds'), RAW_HW, unknown_label_ids='ignore')
  got = decode(b.as_data_source('train')[1]['label'])
  assert (got[0, :3] == 255).all()
  np.testing.assert_array_equal(got[1:], independent_train_ids(ids[1:]))


def test_an_8bit_label_is_an_error_naming_it(tmp_path):
  raw = write_folder(str(tmp_path / 'raw'), 2)
  label = os.path.join(raw, synthia.LABEL_DIR, '0000000.png')
  Image.fromarray(np.zeros(RAW_HW, np.uint8)).save(label)  # 8-bit ids: e.g. a converted copy
  with pytest.raises(builders.DatasetError, match=f'{label}.*8-bit'):
    builders.build('synthia', raw, str(tmp_path / 'tfds'), STORED)


# ---- config, benchmark and prepare ------------------------------------------------------------------------------------


def synthia_config(root: str, config_name: str = 'source_only', preset: str | None = None, **overrides):
  """tiny_config with SYNTHIA as the source, the SYNTHIA benchmark as tiny as the others."""
  config = tiny_config(root, config_name, preset, **{'data.source': 'synthia', **overrides})
  d = config.data
  d.synthetic.synthia_size = d.synthia_size = TINY
  d.synthetic.num_synthia = 16
  return config


def test_prepare_generates_synthia_only_for_synthia_runs(tmp_path):
  gta = synthia_config(str(tmp_path), **{'data.source': 'gta5'})
  assert builders.prepared_domains(gta.data) == ('gta5', 'cityscapes')
  assert builders.prepared_domains(synthia_config(str(tmp_path)).data) == ('cityscapes', 'synthia')
  dirs = synthetic.ensure_domains(gta.data, ('cityscapes',), workers=1)
  assert set(dirs) == {'cityscapes'}
  assert sorted(os.listdir(tmp_path / 'synthetic')) == ['.cityscapes.lock', 'cityscapes']  # no GTA5, no SYNTHIA


def test_real_synthia_dir_is_used_as_is(tmp_path):
  config = synthia_config(str(tmp_path), **{'data.synthia_dir': '/datasets/SYNTHIA'})
  assert synthetic.ensure_domains(config.data, ('synthia',)) == {'synthia': '/datasets/SYNTHIA'}
  assert builders.data_dir_for(config.data, 'synthia').endswith(builders.source_key('/datasets/SYNTHIA'))


@pytest.fixture(scope='module')
def synthia_root(tmp_path_factory):
  """A tiny SYNTHIA -> Cityscapes benchmark, generated and built once per module."""
  root = str(tmp_path_factory.mktemp('data'))
  app.run(synthia_config(root), mode='prepare')
  return root


def test_source_only_run_on_synthia_scores_16_and_13_classes(synthia_root, tmp_path):
  assert not os.path.exists(os.path.join(synthia_root, 'synthetic', 'gta5'))
  workdir = str(tmp_path / 'run')
  app.run(synthia_config(synthia_root, **{'train.num_steps': 3, 'model.name': TINY_MODEL}), workdir=workdir)
  ev = read_eval(workdir)
  assert ev['class_set'] == 'synthia16'
  assert ev['miou'] == pytest.approx(ev['miou_16'])
  per_class = ev['per_class_iou']
  # miou_13 / miou_16: the means of the per-class IoUs over the two sets (classes absent from both prediction and
  # label are undefined and left out of the means); recomputed here from the per-class table.
  for key, names in (('miou_16', labels.SYNTHIA16_CLASS_NAMES), ('miou_13', labels.SYNTHIA13_CLASS_NAMES)):
    values = [per_class[n] for n in names if per_class.get(n) is not None]
    assert ev[key] == pytest.approx(float(np.mean(values)), abs=1e-6)
  assert len(labels.SYNTHIA16_CLASS_NAMES) == 16 and len(labels.SYNTHIA13_CLASS_NAMES) == 13


# ---- one train step of each method, and the presets -----------------------------------------------------------------


@pytest.mark.parametrize('name', ['adv', 'fda', 'dacs', 'adabn', 'source_only'])
@pytest.mark.parametrize('how', ['override', 'preset'])
def test_one_train_step_with_synthia_source(name, how):
  if how == 'preset':
    config = importlib.import_module(f'configs.{name}').get_config('synthia')
  else:
    config = importlib.import_module(f'configs.{name}').get_config()
    config.data.source = 'synthia'
  assert config.data.source == 'synthia'
  config.data.source_train_size = config.data.target_train_size = (32, 64)
  config.train.batch_size = 1
  config.model.init_from, config.model.init_steps = None, 0
  if config.method == 'adabn':
    config.model.init_from = 'runs/unused'
  trainer.check_initialisation(config)
  method = methods.get_method(config)
  shapes = base.train_shapes(config)
  state = jax.eval_shape(lambda key: method.init(key, shapes), jax.random.PRNGKey(0))
  batch = {d: {'image': jax.ShapeDtypeStruct((1, *shapes[d], 3), jnp.uint8),
               'label': jax.ShapeDtypeStruct((1, *shapes[d]), jnp.uint8)} for d in method.domains}
  new_state, metrics = jax.eval_shape(method.train_step, state, batch)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert metrics


def test_demo_warm_start_of_a_synthia_run_is_its_own_source_only_run():
  assert importlib.import_module('configs.adv').get_config('synthia').model.init_from == 'runs/source_only_synthia'
  assert importlib.import_module('configs.adv').get_config().model.init_from == 'runs/source_only'


def test_synthia_preset_is_no_oracle_preset():
  with pytest.raises(Exception, match='oracle'):
    importlib.import_module('configs.oracle').get_config('synthia')


def test_paper_synthia_stores_synthia_at_its_reference_size():
  config = importlib.import_module('configs.source_only').get_config('deeplabv2,paper,synthia')
  assert tuple(config.data.synthia_size) == (760, 1280)
  assert common.REAL_TRAIN_IMAGES['synthia'] == 9400  # SYNTHIA-RAND-CITYSCAPES
