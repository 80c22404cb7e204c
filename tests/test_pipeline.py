"""grain pipelines: shapes, determinism, per-process batches, exact resume, evaluation coverage and padding, crops."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from rtda_jax.data import builders, pipeline
from tests.test_builders import HW, data_config, independent_train_ids, write_cityscapes, write_gta5

STORED = (16, 32)  # [H, W] stored
SHAPE = (8, 16)  # [H, W] training shape


@pytest.fixture(scope='module')
def cfg(tmp_path_factory):
  """12 GTA5 images and Cityscapes 6 train / 6 val images (3 per city), built at 16x32."""
  tmp = tmp_path_factory.mktemp('pipeline')
  c = data_config(str(tmp / 'data'), write_gta5(str(tmp / 'gta'), 12), write_cityscapes(str(tmp / 'cs'), 3))
  for domain in ('gta5', 'cityscapes'):
    raw = c.gta5_dir if domain == 'gta5' else c.cityscapes_dir
    builders.build(domain, raw, builders.data_dir_for(c, domain), STORED)
  c.num_workers = 0
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def fake_processes(monkeypatch, count, index):
  monkeypatch.setattr(jax, 'process_count', lambda *a, **k: count)
  monkeypatch.setattr(jax, 'process_index', lambda *a, **k: index)


# ---- train loader -------------------------------------------------------------------------------------------------


def test_train_batches_have_fixed_shape_and_dtype(cfg):
  it = pipeline.train_loader(cfg, 'gta5', 'train', 4, seed=0, shape=SHAPE)
  for batch in take(it, 5):  # 5 batches of 4 from 12 images: crosses epochs
    assert set(batch) == {'image', 'label'}
    assert batch['image'].shape == (4, *SHAPE, 3) and batch['image'].dtype == np.uint8
    assert batch['label'].shape == (4, *SHAPE) and batch['label'].dtype == np.uint8
    assert set(np.unique(batch['label'])) <= set(range(19)) | {255}


def test_train_order_depends_only_on_the_seed(cfg):
  a = take(pipeline.train_loader(cfg, 'cityscapes', 'train', 2, seed=7, shape=SHAPE), 3)
  b = take(pipeline.train_loader(cfg, 'cityscapes', 'train', 2, seed=7, shape=SHAPE), 3)
  c = take(pipeline.train_loader(cfg, 'cityscapes', 'train', 2, seed=8, shape=SHAPE), 3)
  assert_same(a, b)
  assert any(not np.array_equal(x['image'], y['image']) for x, y in zip(a, c))


def test_one_epoch_visits_every_image_once(cfg):
  it = pipeline.train_loader(cfg, 'gta5', 'train', 4, seed=1, shape=STORED, num_epochs=1)
  images = np.concatenate([b['image'] for b in it])  # [12, 16, 32, 3]
  source = pipeline.data_source(cfg, 'gta5', 'train')
  expected = {pipeline.decode_png(source[i]['image'], 'RGB').tobytes() for i in range(len(source))}
  assert len(images) == 12 and {im.tobytes() for im in images} == expected


def test_batch_is_per_process(cfg, monkeypatch):
  fake_processes(monkeypatch, 2, 1)
  assert pipeline.per_process_batch_size(8) == 4
  batch = next(pipeline.train_loader(cfg, 'gta5', 'train', 4, seed=0, shape=SHAPE))
  assert batch['image'].shape[0] == 2
  with pytest.raises(ValueError, match='multiple of the number of JAX processes'):
    pipeline.train_loader(cfg, 'gta5', 'train', 3, seed=0, shape=SHAPE)


def test_processes_read_disjoint_shards(cfg, monkeypatch):
  seen = []
  for index in range(2):
    with monkeypatch.context() as m:
      fake_processes(m, 2, index)
      it = pipeline.train_loader(cfg, 'gta5', 'train', 2, seed=3, shape=STORED, num_epochs=1)
      seen.append({im.tobytes() for b in it for im in b['image']})
  assert len(seen[0]) == len(seen[1]) == 6 and not seen[0] & seen[1]


@pytest.mark.parametrize('workers', [0, 2])
def test_resume_from_saved_state_gives_the_same_batches(cfg, workers):
  make = lambda: pipeline.train_loader(cfg, 'gta5', 'train', 2, seed=11, shape=SHAPE, num_workers=workers)
  it = make()
  take(it, 3)
  state = json.loads(json.dumps(pipeline.get_state(it)))  # as a JSON checkpoint stores it
  expected = take(it, 5)  # crosses the epoch boundary (6 batches per epoch)
  del it
  restored = make()
  pipeline.set_state(restored, state)
  assert_same(take(restored, 5), expected)


def test_orbax_round_trip(cfg, tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import grain  # pylint: disable=g-import-not-at-top
  it = pipeline.train_loader(cfg, 'cityscapes', 'train', 2, seed=5, shape=SHAPE)
  take(it, 2)
  checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  checkpointer.save(tmp_path / 'ckpt', args=pipeline.orbax_save_args(it))
  expected = take(it, 3)
  restored = pipeline.train_loader(cfg, 'cityscapes', 'train', 2, seed=5, shape=SHAPE)
  restored = checkpointer.restore(tmp_path / 'ckpt', args=pipeline.orbax_restore_args(restored))
  assert_same(take(restored, 3), expected)


def test_crop_mode(cfg):
  cfg = cfg.copy_and_resolve_references()
  cfg.resize_mode = 'crop'
  a = take(pipeline.train_loader(cfg, 'gta5', 'train', 2, seed=2, shape=SHAPE), 2)
  b = take(pipeline.train_loader(cfg, 'gta5', 'train', 2, seed=2, shape=SHAPE), 2)
  assert a[0]['image'].shape == (2, *SHAPE, 3) and a[0]['label'].shape == (2, *SHAPE)
  assert_same(a, b)  # crop positions come from the seeded per-record RNG
  big = next(pipeline.train_loader(cfg, 'gta5', 'train', 2, seed=2, shape=(20, 40)))  # larger than stored
  assert big['image'].shape == (2, 20, 40, 3)
  assert (big['label'][:, 16:] == 255).all() and (big['image'][:, 16:] == 0).all()


def test_random_crop_pads_and_stays_inside():
  rng = np.random.default_rng(0)
  image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  label = np.arange(24, dtype=np.uint8).reshape(4, 6)
  for _ in range(20):
    im, lab = pipeline.random_crop(image, label, (3, 4), rng)
    y, x = divmod(int(lab[0, 0]), 6)
    np.testing.assert_array_equal(lab, label[y:y + 3, x:x + 4])
    np.testing.assert_array_equal(im, image[y:y + 3, x:x + 4])
  im, lab = pipeline.random_crop(image, label, (5, 6), rng)
  assert im.shape == (5, 6, 3) and (lab[4] == 255).all() and (im[4] == 0).all()


def test_bad_arguments(cfg):
  with pytest.raises(builders.DatasetError, match="no split 'val'"):
    pipeline.train_loader(cfg, 'gta5', 'val', 2, seed=0, shape=SHAPE)
  with pytest.raises(ValueError, match='Unknown domain'):
    pipeline.train_loader(cfg, 'mapillary', 'train', 2, seed=0, shape=SHAPE)
  bad = cfg.copy_and_resolve_references()
  bad.resize_mode = 'zoom'
  with pytest.raises(ValueError, match='resize_mode'):
    pipeline.train_loader(bad, 'gta5', 'train', 2, seed=0, shape=SHAPE)


# ---- eval loader --------------------------------------------------------------------------------------------------


def test_eval_visits_every_image_once_in_order_with_padding(cfg):
  loader = pipeline.eval_loader(cfg, 'cityscapes', 'val', 4)
  batches = list(loader)
  assert len(batches) == len(loader) == 2 and loader.num_examples == 6
  for b in batches:
    assert b['image'].shape == (4, *STORED, 3) and b['image'].dtype == np.uint8
    assert b['label'].shape == (4, *STORED) and b['valid'].dtype == bool
  valid = np.concatenate([b['valid'] for b in batches])
  names = [n for b in batches for n in b['name']]
  assert valid.tolist() == [True] * 6 + [False] * 2
  assert names[:6] == sorted(names[:6]) and len(set(names[:6])) == 6 and names[6:] == ['', '']
  pad = batches[1]
  assert (pad['image'][2:] == 0).all() and (pad['label'][2:] == 255).all()
  again = list(loader)  # a second pass gives the same batches
  assert_same(batches, again)


def test_eval_shards_by_process_with_equal_batch_counts(cfg, monkeypatch):
  every = [n for b in pipeline.eval_loader(cfg, 'cityscapes', 'val', 2) for n in b['name']]
  names, counts = [], []
  for index in range(4):
    with monkeypatch.context() as m:
      fake_processes(m, 4, index)
      loader = pipeline.eval_loader(cfg, 'cityscapes', 'val', 2)
      batches = list(loader)
      counts.append(len(batches))
      names += [n for b in batches for n, v in zip(b['name'], b['valid']) if v]
  assert counts == [1, 1, 1, 1] and names == every  # 6 images over 4 processes: 2, 2, 2, 0 (+ padding)


def test_eval_rejects_images_of_another_size():
  decode = pipeline.DecodeEval((8, 8), 'cityscapes/val')
  record = {'image': builders.encode_png(np.zeros((8, 16, 3), np.uint8)),
            'label': builders.encode_png(np.zeros((8, 16), np.uint8)), 'name': b'odd.png'}
  with pytest.raises(builders.DatasetError, match='odd.png'):
    decode.map(record)


@pytest.fixture(scope='module')
def raw_cfg(cfg):
  """The pipeline fixture with its Cityscapes val split also built at the raw resolution (HW)."""
  builders.build_raw('cityscapes', cfg.cityscapes_dir, builders.data_dir_for(cfg, 'cityscapes'), ['val'])
  return cfg


def _raw_val(cfg):
  """(RGB image, train ids) of each raw val file, in the stored order."""
  source = builders.load_raw_builder(cfg, 'cityscapes', 'val').as_data_source('val')
  out = []
  for i in range(len(source)):
    name = source[i]['name'].decode()
    label = name.replace('leftImg8bit', 'gtFine', 1).replace('_leftImg8bit.png', '_gtFine_labelIds.png')
    out.append((Image.open(os.path.join(cfg.cityscapes_dir, name)).convert('RGB'),
                independent_train_ids(np.asarray(Image.open(os.path.join(cfg.cityscapes_dir, label))))))
  return out


def test_eval_reads_the_raw_build_with_the_image_resized(raw_cfg):
  loader = pipeline.eval_loader(raw_cfg, 'cityscapes', 'val', 4, raw=True, image_size=SHAPE,
                                image_resample='bicubic')
  assert loader.size == loader.label_size == HW and loader.image_size == SHAPE
  batches = list(loader)
  images = np.concatenate([b['image'] for b in batches])
  label_maps = np.concatenate([b['label'] for b in batches])
  assert images.shape == (8, *SHAPE, 3) and label_maps.shape == (8, *HW)
  for i, (image, train_ids) in enumerate(_raw_val(raw_cfg)):
    np.testing.assert_array_equal(images[i], np.asarray(image.resize(SHAPE[::-1], Image.BICUBIC)))
    np.testing.assert_array_equal(label_maps[i], train_ids)  # the raw labels, untouched
  assert (images[6:] == 0).all() and (label_maps[6:] == 255).all()  # padding at the fed / scored sizes


def test_eval_resizes_labels_by_nearest_neighbour(raw_cfg):
  loader = pipeline.eval_loader(raw_cfg, 'cityscapes', 'val', 2, raw=True, image_size=SHAPE, label_size=SHAPE)
  label_maps = np.concatenate([b['label'] for b in loader])
  images = np.concatenate([b['image'] for b in loader])
  for i, (image, train_ids) in enumerate(_raw_val(raw_cfg)):
    # PIL's nearest samples input floor((i + 0.5) * 4) = 4 i + 2 for a factor of 4.
    np.testing.assert_array_equal(label_maps[i], train_ids[2::4, 2::4])
    np.testing.assert_array_equal(images[i], np.asarray(image.resize(SHAPE[::-1], Image.BILINEAR)))


def test_eval_rejects_an_unknown_image_resize():
  with pytest.raises(ValueError, match='lanczos'):
    pipeline.DecodeEval((8, 8), 'cityscapes/val', (4, 4), None, 'lanczos')
