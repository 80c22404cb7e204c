"""TFDS builders: build + read back, label mapping, errors that name the file, TensorFlow-free build, reuse."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from PIL import Image

from configs import common
from rtda_jax import errors, labels
from rtda_jax.data import builders

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HW = (32, 64)  # raw fixture size [H, W]
STORED = (16, 32)  # stored size [H, W]


# ---- fixture folders in the real layouts (also used by test_pipeline) ---------------------------------------------


def _save(array: np.ndarray, path: str, mode: str | None = None) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  im = Image.fromarray(array)
  if mode == 'P':  # palette image whose indices are the label ids, as in GTA5
    im = im.convert('L').convert('P')
    im.putdata(array.reshape(-1).tolist())
  im.save(path)


# Raw label ids the fixtures draw from: the table's ids 0..33 and the ignore value 255 (other ids are an error).
FIXTURE_IDS = np.array([*range(34), 255], np.uint8)


def write_gta5(root: str, n: int, hw=HW, seed: int = 0) -> str:
  """images/NNNNN.png (RGB) and labels/NNNNN.png ('P', indices = label ids 0..33 and 255)."""
  rng = np.random.default_rng(seed)
  for i in range(1, n + 1):
    _save(rng.integers(0, 256, (*hw, 3), dtype=np.uint8), os.path.join(root, 'images', f'{i:05d}.png'))
    _save(rng.choice(FIXTURE_IDS, hw), os.path.join(root, 'labels', f'{i:05d}.png'), 'P')
  return root


def write_cityscapes(root: str, per_city: int, hw=HW, seed: int = 1, cities=('aachen', 'bonn')) -> str:
  """leftImg8bit/{train,val}/<city>/..._leftImg8bit.png and gtFine/.../..._gtFine_labelIds.png ('L')."""
  rng = np.random.default_rng(seed)
  for split in ('train', 'val'):
    for city in cities:
      for i in range(per_city):
        stem = f'{city}_{i:06d}_000019'
        _save(rng.integers(0, 256, (*hw, 3), dtype=np.uint8),
              os.path.join(root, 'leftImg8bit', split, city, f'{stem}_leftImg8bit.png'))
        _save(rng.choice(FIXTURE_IDS, hw), os.path.join(root, 'gtFine', split, city, f'{stem}_gtFine_labelIds.png'))
        _save(np.zeros((*hw, 3), np.uint8), os.path.join(root, 'gtFine', split, city, f'{stem}_gtFine_color.png'))
  return root


def data_config(root: str, gta5_dir: str | None, cityscapes_dir: str | None, size=STORED):
  cfg = common.get_base_config().data
  cfg.root = root
  cfg.gta5_dir, cfg.cityscapes_dir = gta5_dir, cityscapes_dir
  cfg.gta5_size = cfg.cityscapes_size = tuple(size)
  return cfg


def independent_train_ids(raw: np.ndarray) -> np.ndarray:
  """Raw ids -> train ids straight from the label table (not through labels' lookup tables)."""
  table = {l.id: l.train_id for l in labels.LABELS if l.id >= 0}
  return np.vectorize(lambda v: table.get(int(v), 255), otypes=[np.uint8])(raw)


def decode(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)))


# ---- build and read back ------------------------------------------------------------------------------------------


def test_gta5_build_reads_back_resized_and_mapped(tmp_path):
  raw = write_gta5(str(tmp_path / 'gta'), 3)
  b = builders.build('gta5', raw, str(tmp_path / 'tfds'), STORED)
  assert list(b.info.splits) == ['train'] and b.info.splits['train'].num_examples == 3
  source = b.as_data_source('train')
  for i in range(3):
    ex = source[i]
    name = f'images/{i + 1:05d}.png'
    assert ex['name'].decode() == name
    src_image = Image.open(os.path.join(raw, name))
    src_label = np.asarray(Image.open(os.path.join(raw, 'labels', f'{i + 1:05d}.png')))  # palette indices
    image, label = decode(ex['image']), decode(ex['label'])
    assert image.shape == (*STORED, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.asarray(src_image.resize(STORED[::-1], Image.BILINEAR)))
    assert label.shape == STORED and label.dtype == np.uint8
    # Nearest with a factor of 2 samples the centre pixel of each 2x2 block: raw[1::2, 1::2].
    np.testing.assert_array_equal(label, independent_train_ids(src_label[1::2, 1::2]))
    assert set(np.unique(label)) <= set(range(19)) | {255}


def test_cityscapes_build_at_raw_size_is_exact(tmp_path):
  raw = write_cityscapes(str(tmp_path / 'cs'), 2)
  b = builders.build('cityscapes', raw, str(tmp_path / 'tfds'), HW)
  assert {s: b.info.splits[s].num_examples for s in b.info.splits} == {'train': 4, 'val': 4}
  val = b.as_data_source('val')
  names = [val[i]['name'].decode() for i in range(len(val))]
  assert names == sorted(names) and names[0] == 'leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png'
  for i, name in enumerate(names):
    src = np.asarray(Image.open(os.path.join(raw, name)))
    lab = np.asarray(Image.open(os.path.join(raw, name.replace('leftImg8bit', 'gtFine', 1)
                                             .replace('_leftImg8bit.png', '_gtFine_labelIds.png'))))
    np.testing.assert_array_equal(decode(val[i]['image']), src)
    np.testing.assert_array_equal(decode(val[i]['label']), independent_train_ids(lab))


def _one_label(raw: str, ids: np.ndarray, name: str = '00001.png') -> None:
  _save(np.zeros((*ids.shape, 3), np.uint8), os.path.join(raw, 'images', name))
  _save(ids, os.path.join(raw, 'labels', name), 'P')


OUTSIDE = np.array([[7, 26, 34, 200], [0, 33, 255, 99]], np.uint8).repeat(4, 0).repeat(4, 1)  # [8, 16]: 34, 99, 200


def test_ids_outside_the_table_are_an_error_naming_the_file_and_the_ids(tmp_path):
  raw = str(tmp_path / 'gta')
  _one_label(raw, OUTSIDE)
  with pytest.raises(builders.DatasetError) as err:
    builders.build('gta5', raw, str(tmp_path / 'tfds'), (8, 16))
  message = str(err.value)
  assert os.path.join(raw, 'labels', '00001.png') in message and 'unknown_label_ids=ignore' in message
  assert '34 (16 px), 99 (16 px), 200 (16 px)' in message  # each id covers one 4x4 block
  assert not (tmp_path / 'tfds' / 'gta5').exists() or not any((tmp_path / 'tfds' / 'gta5').rglob('*.array_record*'))


def test_ids_outside_the_table_become_ignore_when_asked(tmp_path):
  raw = str(tmp_path / 'gta')
  _one_label(raw, OUTSIDE)
  b = builders.build('gta5', raw, str(tmp_path / 'tfds'), (8, 16), unknown_label_ids='ignore')
  label = decode(b.as_data_source('train')[0]['label'])
  expected = np.array([[0, 13, 255, 255], [255, 18, 255, 255]], np.uint8).repeat(4, 0).repeat(4, 1)
  np.testing.assert_array_equal(label, expected)


def test_a_split_whose_labels_are_all_ignore_is_an_error(tmp_path):
  """The fault sweep's case: a GTA5 folder whose labels are all 200 prepared and trained with loss 0.0."""
  raw = str(tmp_path / 'gta')
  for i in (1, 2):
    _one_label(raw, np.full((8, 16), 200, np.uint8), f'{i:05d}.png')
  with pytest.raises(builders.DatasetError, match=r"00001.png' holds ids 200 \(128 px\)"):
    builders.prepare(data_config(str(tmp_path / 'data'), raw, write_cityscapes(str(tmp_path / 'cs'), 1), (8, 16)))
  with pytest.raises(builders.DatasetError, match=r'Every label of the gta5 train split .* is ignore.*none of its 2 '
                                                  r'label files.*unknown_label_ids=ignore'):
    builders.build('gta5', raw, str(tmp_path / 'tfds'), (8, 16), unknown_label_ids='ignore')
  _one_label(raw, np.full((8, 16), 255, np.uint8), '00003.png')  # ignore ids only: the same error without the option
  for i in (1, 2):
    _one_label(raw, np.array([[0, 1, 255]], np.uint8).repeat(8, 0).repeat(6, 1)[:, :16], f'{i:05d}.png')
  with pytest.raises(builders.DatasetError, match='Every label of the gta5 train split'):
    builders.build('gta5', raw, str(tmp_path / 'tfds'), (8, 16))
  assert not any((tmp_path / 'tfds').rglob('*.array_record*'))


def test_unknown_label_ids_option_is_checked(tmp_path):
  with pytest.raises(errors.ConfigError, match="unknown_label_ids='maybe'"):
    builders.build('gta5', str(tmp_path), str(tmp_path / 'tfds'), (8, 16), unknown_label_ids='maybe')


def test_many_shards_keep_the_order(tmp_path, monkeypatch):
  monkeypatch.setattr(builders, 'images_per_shard', lambda size: 2)
  raw = write_gta5(str(tmp_path / 'gta'), 5)
  b = builders.build('gta5', raw, str(tmp_path / 'tfds'), STORED)
  assert b.info.splits['train'].num_shards == 3
  source = b.as_data_source('train')
  assert [source[i]['name'].decode() for i in range(5)] == [f'images/{i:05d}.png' for i in range(1, 6)]


def test_a_build_outlives_its_raw_folder(tmp_path):
  raw = write_gta5(str(tmp_path / 'gta'), 2)
  builders.build('gta5', raw, str(tmp_path / 'tfds'), STORED)
  os.rename(raw, raw + '_moved')
  b = builders.build('gta5', raw, str(tmp_path / 'tfds'), STORED)  # warns, reuses
  assert b.info.splits['train'].num_examples == 2


# ---- errors -------------------------------------------------------------------------------------------------------


def _truncate(path: str) -> None:
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[: len(data) // 2])


def _corrupt_middle(path: str) -> None:  # header and end chunk intact, compressed data broken
  data = bytearray(open(path, 'rb').read())
  start = data.find(b'IDAT') + 20
  data[start:start + 40] = bytes(b ^ 0xFF for b in data[start:start + 40])
  open(path, 'wb').write(bytes(data))


def _resize_label(path: str) -> None:
  Image.open(path).resize((HW[1] // 2, HW[0])).save(path)


GTA5_BREAKAGES = {
    # name: (how to break the folder, path fragment the message must name, another one or None)
    'missing folder': (lambda r: os.rename(r, r + '_gone'), 'gta', None),
    'no images folder': (lambda r: os.rename(os.path.join(r, 'images'), os.path.join(r, 'imgs')), 'images', None),
    'image without label': (lambda r: os.remove(os.path.join(r, 'labels', '00002.png')),
                            os.path.join('labels', '00002.png'), os.path.join('images', '00002.png')),
    'label without image': (lambda r: os.remove(os.path.join(r, 'images', '00002.png')),
                            os.path.join('labels', '00002.png'), os.path.join('images', '00002.png')),
    'label size differs': (lambda r: _resize_label(os.path.join(r, 'labels', '00003.png')),
                           os.path.join('labels', '00003.png'), os.path.join('images', '00003.png')),
    'truncated image': (lambda r: _truncate(os.path.join(r, 'images', '00001.png')),
                        os.path.join('images', '00001.png'), None),
    'not a png': (lambda r: open(os.path.join(r, 'labels', '00001.png'), 'wb').write(b'hello'),
                  os.path.join('labels', '00001.png'), None),
    'corrupt data': (lambda r: _corrupt_middle(os.path.join(r, 'images', '00002.png')),
                     os.path.join('images', '00002.png'), None),
}


@pytest.mark.parametrize('case', sorted(GTA5_BREAKAGES))
def test_gta5_errors_name_the_file_and_write_nothing(tmp_path, case):
  raw = write_gta5(str(tmp_path / 'gta'), 3)
  breakage, fragment, other = GTA5_BREAKAGES[case]
  breakage(raw)
  with pytest.raises(builders.DatasetError) as err:
    builders.build('gta5', raw, str(tmp_path / 'tfds'), STORED)
  message = str(err.value)
  assert os.path.join(str(tmp_path), fragment) in message or (fragment in message and str(tmp_path) in message)
  assert isinstance(err.value, errors.DataError)  # a user error: main.py prints the message alone, exit 2
  missing = case in ('missing folder', 'no images folder', 'image without label', 'label without image')
  assert isinstance(err.value, errors.MissingFileError) == missing
  if other:
    assert other in message
  built = tmp_path / 'tfds' / 'gta5'
  assert not built.exists() or not any(p.name.endswith('.array_record-00000-of-00001') for p in built.rglob('*'))


def test_size_mismatch_message_names_both_files_and_sizes(tmp_path):
  raw = write_gta5(str(tmp_path / 'gta'), 2)
  _resize_label(os.path.join(raw, 'labels', '00001.png'))
  with pytest.raises(builders.DatasetError, match='32x32.*64x32.*delete both'):
    builders.build('gta5', raw, str(tmp_path / 'tfds'), STORED)


@pytest.mark.parametrize('case', ['no gtFine', 'no val split', 'image without label', 'label without image'])
def test_cityscapes_errors(tmp_path, case):
  raw = write_cityscapes(str(tmp_path / 'cs'), 1)
  stem = os.path.join('train', 'bonn', 'bonn_000000_000019')
  if case == 'no gtFine':
    os.rename(os.path.join(raw, 'gtFine'), os.path.join(raw, 'gt')); fragment = 'gtFine'
  elif case == 'no val split':
    os.rename(os.path.join(raw, 'leftImg8bit', 'val'), os.path.join(raw, 'v')); fragment = 'leftImg8bit/val'
  elif case == 'image without label':
    fragment = os.path.join('gtFine', stem + '_gtFine_labelIds.png'); os.remove(os.path.join(raw, fragment))
  else:
    os.remove(os.path.join(raw, 'leftImg8bit', stem + '_leftImg8bit.png'))
    fragment = os.path.join('gtFine', stem + '_gtFine_labelIds.png')
  with pytest.raises(builders.DatasetError) as err:
    builders.build('cityscapes', raw, str(tmp_path / 'tfds'), STORED)
  assert os.path.join(raw, fragment) in str(err.value)


def test_load_builder_before_prepare_says_what_to_do(tmp_path):
  cfg = data_config(str(tmp_path), None, None)
  with pytest.raises(builders.DatasetError, match='--mode=prepare'):
    builders.load_builder(cfg, 'gta5')


# ---- TensorFlow-free build ----------------------------------------------------------------------------------------

_NO_TF_SCRIPT = '''
import sys

class _HideTensorFlow:
  """Wraps every import finder so that TensorFlow looks uninstalled: `import tensorflow` raises ImportError.

  (sys.modules['tensorflow'] = None would do that too, but etils then believes TensorFlow is loaded, since it tests
  `'tensorflow' in sys.modules`, and TFDS cannot even be imported.)
  """
  def __init__(self, finder):
    self._finder = finder
  def find_spec(self, name, path=None, target=None):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      return None
    find = getattr(self._finder, 'find_spec', None)
    return find(name, path, target) if find else None
  def __getattr__(self, attr):
    return getattr(self._finder, attr)

sys.meta_path[:] = [_HideTensorFlow(f) for f in sys.meta_path]
try:
  import tensorflow
  raise SystemExit('tensorflow is importable')
except ImportError:
  pass

import io, os
import numpy as np
from PIL import Image
sys.path.insert(0, {repo!r})
from tests import test_builders as tb
from rtda_jax.data import builders

raw = tb.write_gta5(os.path.join({tmp!r}, 'gta'), 3)
b = builders.build('gta5', raw, os.path.join({tmp!r}, 'tfds'), tb.STORED)
source = b.as_data_source('train')
assert len(source) == 3
for i in range(3):
  label = np.asarray(Image.open(io.BytesIO(source[i]['label'])))
  raw_ids = np.asarray(Image.open(os.path.join(raw, 'labels', '%05d.png' % (i + 1))))
  np.testing.assert_array_equal(label, tb.independent_train_ids(raw_ids[1::2, 1::2]))
assert not any(m == 'tensorflow' or m.startswith('tensorflow.') for m in sys.modules), 'tensorflow was imported'
print('BUILT WITHOUT TENSORFLOW')
'''


def test_build_without_tensorflow(tmp_path):
  script = _NO_TF_SCRIPT.format(repo=REPO, tmp=str(tmp_path))
  proc = subprocess.run([sys.executable, '-c', textwrap.dedent(script)], capture_output=True, text=True,
                        cwd=REPO, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'BUILT WITHOUT TENSORFLOW' in proc.stdout


# ---- prepare: where builds live, reuse, rebuild ---------------------------------------------------------------------


def _fake_synthetic(monkeypatch, gta5_dir: str, cityscapes_dir: str) -> list:
  calls = []

  def ensure_benchmark(data_config):
    calls.append(data_config)
    return (data_config.gta5_dir or gta5_dir, data_config.cityscapes_dir or cityscapes_dir)

  fake = types.ModuleType('rtda_jax.data.synthetic')
  fake.ensure_benchmark = ensure_benchmark
  fake.ensure_domains = lambda data_config, domains: dict(zip(('gta5', 'cityscapes'), ensure_benchmark(data_config)))
  import rtda_jax.data  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, 'rtda_jax.data.synthetic', fake)
  monkeypatch.setattr(rtda_jax.data, 'synthetic', fake, raising=False)
  return calls


def test_prepare_builds_then_reuses_then_rebuilds_on_change(tmp_path, monkeypatch):
  gta = write_gta5(str(tmp_path / 'raw' / 'gta'), 2)
  cs = write_cityscapes(str(tmp_path / 'raw' / 'cs'), 1)
  calls = _fake_synthetic(monkeypatch, gta, cs)
  cfg = data_config(str(tmp_path / 'data'), None, None)
  built = builders.prepare(cfg)
  assert len(calls) == 1 and set(built) == {'gta5', 'cityscapes'}
  assert os.fspath(built['gta5'].data_dir).startswith(str(tmp_path / 'data' / 'tfds' / 'synthetic' / 'gta5'))
  assert built['cityscapes'].info.splits['val'].num_examples == 2

  def no_work(*args, **kwargs):
    raise AssertionError('a second prepare must not convert or check images')
  with monkeypatch.context() as m:
    m.setattr(builders, 'convert_example', no_work)
    m.setattr(builders, 'check_example', no_work)
    again = builders.prepare(cfg)
  assert again['gta5'].info.splits['train'].num_examples == 2
  assert builders.load_builder(cfg, 'gta5').info.splits['train'].num_examples == 2

  write_gta5(gta, 3, seed=5)  # the raw folder changed (e.g. regenerated): the next prepare rebuilds
  assert builders.prepare(cfg)['gta5'].info.splits['train'].num_examples == 3


def test_real_and_generated_data_never_mix(tmp_path, monkeypatch):
  gta = write_gta5(str(tmp_path / 'raw' / 'gta'), 2)
  cs = write_cityscapes(str(tmp_path / 'raw' / 'cs'), 1)
  _fake_synthetic(monkeypatch, gta, cs)
  generated = data_config(str(tmp_path / 'data'), None, None)
  real = data_config(str(tmp_path / 'data'), gta, cs)
  keys = {builders.source_key(None), builders.source_key(gta), builders.source_key(cs)}
  assert len(keys) == 3 and 'synthetic' in keys
  a = builders.prepare(generated)['gta5'].data_dir
  b = builders.prepare(real)['gta5'].data_dir
  assert os.fspath(a) != os.fspath(b) and os.path.basename(gta) in os.fspath(b)


# ---- builds at the raw resolution (evaluation protocols that score there) -------------------------------------------


def _no_work(monkeypatch):
  def no_work(*args, **kwargs):
    raise AssertionError('an up-to-date build must not convert or check images')
  monkeypatch.setattr(builders, 'convert_example', no_work)
  monkeypatch.setattr(builders, 'check_example', no_work)


def test_build_raw_keeps_the_raw_resolution_of_the_requested_split_only(tmp_path):
  raw = write_cityscapes(str(tmp_path / 'cs'), 2)
  cfg = data_config(str(tmp_path / 'data'), None, raw)  # stored at STORED, raw files at HW
  b = builders.build_raw('cityscapes', raw, builders.data_dir_for(cfg, 'cityscapes'), ['val'])
  assert b.size == HW and list(b.info.splits) == ['val']
  loaded = builders.load_raw_builder(cfg, 'cityscapes', 'val')
  assert loaded.size == HW and os.fspath(loaded.data_dir) == os.fspath(b.data_dir)
  val = loaded.as_data_source('val')
  for i in range(len(val)):
    name = val[i]['name'].decode()
    lab = np.asarray(Image.open(os.path.join(raw, name.replace('leftImg8bit', 'gtFine', 1)
                                             .replace('_leftImg8bit.png', '_gtFine_labelIds.png'))))
    np.testing.assert_array_equal(decode(val[i]['image']), np.asarray(Image.open(os.path.join(raw, name))))
    np.testing.assert_array_equal(decode(val[i]['label']), independent_train_ids(lab))
  with pytest.raises(builders.DatasetError, match='train split is not built at its raw resolution.*--mode=prepare'):
    builders.load_raw_builder(cfg, 'cityscapes', 'train')


def test_prepare_builds_raw_splits_once_and_shares_a_build_of_that_size(tmp_path, monkeypatch):
  gta = write_gta5(str(tmp_path / 'raw' / 'gta'), 2)
  cs = write_cityscapes(str(tmp_path / 'raw' / 'cs'), 1)
  _fake_synthetic(monkeypatch, gta, cs)
  cfg = data_config(str(tmp_path / 'data'), None, None)
  assert 'cityscapes_raw' not in builders.prepare(cfg)
  built = builders.prepare(cfg, raw_splits=('val',))
  assert built['cityscapes'].size == STORED and built['cityscapes_raw'].size == HW
  assert list(built['cityscapes_raw'].info.splits) == ['val']
  with monkeypatch.context() as m:
    _no_work(m)
    assert builders.prepare(cfg, raw_splits=('val',))['cityscapes_raw'].size == HW
  # Stored at the raw size, the stored build (every split) is the raw one: no second build.
  same = data_config(str(tmp_path / 'data'), None, None, size=HW)
  built = builders.prepare(same, raw_splits=('val',))
  assert os.fspath(built['cityscapes_raw'].data_dir) == os.fspath(built['cityscapes'].data_dir)
  assert sorted(built['cityscapes'].info.splits) == ['train', 'val']


def test_a_build_that_lacks_a_split_is_rebuilt_with_it(tmp_path, monkeypatch):
  raw = write_cityscapes(str(tmp_path / 'cs'), 1)
  out = str(tmp_path / 'tfds')
  assert list(builders.build('cityscapes', raw, out, STORED, splits=['val']).info.splits) == ['val']
  assert sorted(builders.build('cityscapes', raw, out, STORED).info.splits) == ['train', 'val']
  with monkeypatch.context() as m:
    _no_work(m)  # a build with every split serves a request for one
    assert sorted(builders.build('cityscapes', raw, out, STORED, splits=['val']).info.splits) == ['train', 'val']
  with pytest.raises(builders.DatasetError, match="no split 'test'"):
    builders.build('cityscapes', raw, out, STORED, splits=['test'])


def test_raw_size_needs_one_size_per_split(tmp_path):
  raw = write_cityscapes(str(tmp_path / 'cs'), 1)
  assert builders.raw_size('cityscapes', raw, 'val') == HW
  stem = os.path.join('val', 'bonn', 'bonn_000000_000019')
  for path in (os.path.join(raw, 'leftImg8bit', stem + '_leftImg8bit.png'),
               os.path.join(raw, 'gtFine', stem + '_gtFine_labelIds.png')):
    Image.open(path).resize((HW[1] // 2, HW[0])).save(path)
  with pytest.raises(builders.DatasetError, match=r'aachen_000000.*64x32.*bonn_000000.*32x32'):
    builders.raw_size('cityscapes', raw, 'val')


def test_a_raw_build_outlives_its_raw_folder(tmp_path):
  raw = write_cityscapes(str(tmp_path / 'cs'), 1)
  out = str(tmp_path / 'tfds')
  builders.build_raw('cityscapes', raw, out, ['val'])
  os.rename(raw, raw + '_moved')
  assert builders.build_raw('cityscapes', raw, out, ['val']).size == HW  # the recorded size; warns, reuses
  with pytest.raises(builders.DatasetError, match='does not exist'):  # no recorded size for train
    builders.build_raw('cityscapes', raw, out, ['val', 'train'])
