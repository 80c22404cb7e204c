"""SYNTHIA-RAND-CITYSCAPES: the id table against the references, the 16-bit label PNG reader and writer, and the
checks of a SYNTHIA folder (each error names the file)."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pyspng
import pytest
from PIL import Image

from rtda_jax import labels
from rtda_jax.data import synthia
from rtda_jax.errors import DataError, MissingFileError, UserError

# The SYNTHIA id -> Cityscapes class of SYNTHIA -> Cityscapes, as the references state it: the 16-class table of
# valeoai/ESL advent/dataset/synthia.py (num_classes=16, ids 3 4 2 21 5 7 15 9 6 1 10 17 8 19 12 11 in Cityscapes'
# order) with Cityscapes' class names written out here.
REFERENCE_16 = {3: 'road', 4: 'sidewalk', 2: 'building', 21: 'wall', 5: 'fence', 7: 'pole', 15: 'traffic light',
                9: 'traffic sign', 6: 'vegetation', 1: 'sky', 10: 'person', 17: 'rider', 8: 'car', 19: 'bus',
                12: 'motorcycle', 11: 'bicycle'}
# The 19-class id_to_trainid of RoyalVane/CLAN dataset/synthia_dataset.py and vikolss/DACS data/synthia_dataset.py,
# which also map terrain (16), truck (18) and train (20); the 16-class protocol ignores those three.
REFERENCE_19 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13, 18: 14,
                19: 15, 20: 16, 12: 17, 11: 18}
# [23] REFERENCE_16 as a lookup table of train ids (255 = ignore).
REFERENCE_MAP = np.array([labels.CLASS_NAMES.index(REFERENCE_16[i]) if i in REFERENCE_16 else 255
                          for i in range(23)], np.uint8)


# ---- an independent PNG encoder (the file format byte by byte, as the PNG specification states it) --------------


def _chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)


def png16_bytes(array: np.ndarray) -> bytes:
  """[H, W] or [H, W, C] (C = 2, 3, 4) integers -> a 16-bit PNG, rows filtered None, Sub and Up in turn (so that
  the decoder has to undo real filters)."""
  a = np.asarray(array, np.uint16)
  if a.ndim == 2:
    a = a[..., None]
  h, w, c = a.shape
  colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
  raw = a.astype('>u2').view(np.uint8).reshape(h, w * c * 2).astype(np.int32)  # [H, row bytes], big-endian samples
  bpp = 2 * c
  rows = []
  for y in range(h):
    kind = y % 3
    if kind == 1:  # Sub: byte minus the byte one pixel to the left
      row = raw[y] - np.concatenate([np.zeros(bpp, np.int32), raw[y, :-bpp]])
    elif kind == 2 and y > 0:  # Up: byte minus the byte above
      row = raw[y] - raw[y - 1]
    else:
      kind, row = 0, raw[y]
    rows.append(bytes([kind]) + (row % 256).astype(np.uint8).tobytes())
  return (b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, colour, 0, 0, 0))
          + _chunk(b'IDAT', zlib.compress(b''.join(rows))) + _chunk(b'IEND', b''))


def write_png16(path, array: np.ndarray) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(png16_bytes(array))
  return str(path)


def synthia_label(ids: np.ndarray, instances: np.ndarray | None = None) -> np.ndarray:
  """[H, W] ids -> [H, W, 3] as SYNTHIA stores them: class id, instance id, 0."""
  inst = np.zeros_like(ids) if instances is None else instances
  return np.stack([ids, inst, np.zeros_like(ids)], axis=-1)


def make_folder(root, names=('0000000', '0000001', '0000002'), size=(6, 8), seed=0) -> dict[str, np.ndarray]:
  """A SYNTHIA folder of `names`: RGB images (Pillow, 8-bit) and 16-bit labels (the independent encoder)."""
  rng = np.random.default_rng(seed)
  ids = {}
  for name in names:
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    os.makedirs(os.path.join(root, 'RGB'), exist_ok=True)
    Image.fromarray(image).save(os.path.join(root, 'RGB', f'{name}.png'))
    ids[name] = rng.integers(0, labels.SYNTHIA_MAX_ID + 1, size)
    write_png16(os.path.join(root, 'GT', 'LABELS', f'{name}.png'), synthia_label(ids[name], 300 + ids[name]))
  return ids


# ---- the id table ---------------------------------------------------------------------------------------------------


def test_id_table_is_the_references_16_class_table():
  expected = np.full(256, 255, np.uint8)
  for synthia_id, name in REFERENCE_16.items():
    expected[synthia_id] = labels.CLASS_NAMES.index(name)
  np.testing.assert_array_equal(labels.SYNTHIA_TO_TRAIN, expected)
  # The 19-class tables agree on every id but terrain, truck and train, which the 16-class protocol ignores.
  nineteen = {i: t for i, t in REFERENCE_19.items() if labels.CLASS_NAMES[t] not in ('terrain', 'truck', 'train')}
  assert {i: int(labels.SYNTHIA_TO_TRAIN[i]) for i in nineteen} == nineteen
  assert [int(labels.SYNTHIA_TO_TRAIN[i]) for i in (16, 18, 20)] == [255] * 3
  assert not labels.SYNTHIA_TO_TRAIN.flags.writeable


def test_evaluation_class_sets():
  assert set(labels.SYNTHIA16_CLASS_NAMES) == set(REFERENCE_16.values())
  assert labels.SYNTHIA16_CLASS_NAMES == tuple(n for n in labels.CLASS_NAMES if n not in ('terrain', 'truck', 'train'))
  assert labels.SYNTHIA13_CLASS_NAMES == tuple(n for n in labels.SYNTHIA16_CLASS_NAMES
                                               if n not in ('wall', 'fence', 'pole'))
  assert len(labels.SYNTHIA13_CLASS_NAMES) == 13


# ---- reading and writing label PNGs --------------------------------------------------------------------------------


def test_read_label_takes_the_first_channel_of_a_16bit_png(tmp_path):
  rng = np.random.default_rng(1)
  ids = rng.integers(0, labels.SYNTHIA_MAX_ID + 1, (7, 5))
  ids[0, :3] = [21, 22, 1]  # ids below 256: the high byte is 0, all that Pillow keeps of a 16-bit RGB sample
  instances = rng.integers(256, 60000, (7, 5))  # would fail the id check if the reader took the wrong channel
  path = write_png16(tmp_path / 'l.png', synthia_label(ids, instances))
  got = synthia.read_label(path)
  assert got.dtype == np.uint16 and got.shape == (7, 5)
  np.testing.assert_array_equal(got, ids)
  np.testing.assert_array_equal(synthia.read_train_ids(path), REFERENCE_MAP[ids])


@pytest.mark.parametrize('channels', [1, 4])
def test_read_label_reads_grey_and_rgba_16bit_layouts(tmp_path, channels):
  ids = np.arange(20, dtype=np.uint16).reshape(4, 5)
  rest = [np.full_like(ids, 65535)] * (channels - 1)
  path = write_png16(tmp_path / 'l.png', np.stack([ids, *rest], -1) if rest else ids)
  np.testing.assert_array_equal(synthia.read_label(path), ids)


def test_write_label_writes_the_synthia_layout(tmp_path):
  rng = np.random.default_rng(2)
  ids = rng.integers(0, labels.SYNTHIA_MAX_ID + 1, (9, 11))
  instances = rng.integers(0, 65536, (9, 11))
  path = str(tmp_path / 'w.png')
  synthia.write_label(path, ids, instances)
  with open(path, 'rb') as f:
    data = f.read()
  assert struct.unpack('>IIBB', data[16:26]) == (11, 9, 16, 2)  # IHDR: width, height, 16-bit, RGB
  decoded = pyspng.load(data)  # libspng, independent of the writer (pypng)
  np.testing.assert_array_equal(decoded[..., :3], synthia_label(ids, instances))
  np.testing.assert_array_equal(synthia.read_label(path), ids)
  synthia.write_label(path, ids)  # no instances: channel 1 is 0
  np.testing.assert_array_equal(pyspng.load(open(path, 'rb').read())[..., 1], 0)


def test_write_label_rejects_what_is_not_a_16bit_id_map(tmp_path):
  with pytest.raises(ValueError, match=r'\[H, W\]'):
    synthia.write_label(str(tmp_path / 'a.png'), np.zeros((2, 2, 3), np.uint16))
  with pytest.raises(ValueError, match='0..65535'):
    synthia.write_label(str(tmp_path / 'b.png'), np.array([[70000]]))


def test_ids_outside_the_table_are_an_error_naming_the_file(tmp_path):
  ids = np.zeros((3, 4), np.int64)
  ids[1, 2], ids[2, 3] = 23, 300
  path = write_png16(tmp_path / 'GT' / 'LABELS' / '0000007.png', synthia_label(ids))
  with pytest.raises(DataError, match=r"0000007\.png.*\[23, 300\] at 2 pixel\(s\).*0\.\.22") as err:
    synthia.read_label(path)
  assert isinstance(err.value, UserError)


def test_an_8bit_label_is_an_error_that_says_what_it_looks_like(tmp_path):
  colour = tmp_path / 'colour.png'
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(colour)  # what GT/COLOR holds
  with pytest.raises(DataError, match=r'colour\.png.*8-bit RGB.*GT/COLOR'):
    synthia.read_label(str(colour))
  grey = tmp_path / 'grey.png'
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(grey)  # e.g. a copy mapped to train ids
  with pytest.raises(DataError, match=r'grey\.png.*8-bit greyscale.*16-bit'):
    synthia.read_label(str(grey))


def test_unreadable_labels_are_an_error_naming_the_file(tmp_path):
  good = png16_bytes(synthia_label(np.ones((8, 8), np.int64)))
  cases = {'truncated.png': good[:len(good) // 2], 'text.png': b'not a png at all' * 4,
           # the end chunk present but the image data corrupted: only decoding finds it
           'corrupt.png': good[:41] + bytes(b ^ 0xFF for b in good[41:-12]) + good[-12:]}
  for name, data in cases.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError, match=rf'{name}.*unreadable or truncated'):
      synthia.read_label(str(tmp_path / name))
  with pytest.raises(MissingFileError, match='nowhere.png'):
    synthia.read_label(str(tmp_path / 'nowhere.png'))


# ---- a SYNTHIA folder ----------------------------------------------------------------------------------------------


def test_list_pairs_pairs_images_and_labels_by_name(tmp_path):
  ids = make_folder(tmp_path, names=('0000002', '0000000', '0000001'))
  pairs = synthia.list_pairs(str(tmp_path))
  assert pairs == [(str(tmp_path / 'RGB' / f'{n}.png'), str(tmp_path / 'GT' / 'LABELS' / f'{n}.png'))
                   for n in sorted(ids)]
  for (_, label), name in zip(pairs, sorted(ids)):
    np.testing.assert_array_equal(synthia.read_label(label), ids[name])


def test_missing_label_or_image_is_an_error_naming_it(tmp_path):
  make_folder(tmp_path)
  os.remove(tmp_path / 'GT' / 'LABELS' / '0000001.png')
  with pytest.raises(MissingFileError, match=r"Image '.*RGB/0000001\.png' has no label '.*GT/LABELS/0000001\.png'"):
    synthia.list_pairs(str(tmp_path), check=False)
  os.remove(tmp_path / 'RGB' / '0000001.png')
  os.remove(tmp_path / 'RGB' / '0000002.png')
  with pytest.raises(MissingFileError, match=r"Label '.*GT/LABELS/0000002\.png' has no image"):
    synthia.list_pairs(str(tmp_path))


def test_size_mismatch_is_an_error_naming_both_files(tmp_path):
  make_folder(tmp_path)
  write_png16(tmp_path / 'GT' / 'LABELS' / '0000001.png', synthia_label(np.zeros((6, 9), np.int64)))
  with pytest.raises(DataError, match=r"LABELS/0000001\.png' is 9x6 \(WxH\) but its image '.*RGB/0000001\.png' "
                                      r'is 8x6'):
    synthia.list_pairs(str(tmp_path))
  synthia.list_pairs(str(tmp_path), check=False)  # pairing alone does not read the files


def test_folder_checks_find_unreadable_and_8bit_labels(tmp_path):
  make_folder(tmp_path)
  label = tmp_path / 'GT' / 'LABELS' / '0000002.png'
  label.write_bytes(label.read_bytes()[:-20])  # the end chunk cut off
  with pytest.raises(DataError, match=r'0000002\.png.*no IEND'):
    synthia.list_pairs(str(tmp_path))
  Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(label)
  with pytest.raises(DataError, match=r'0000002\.png.*GT/COLOR'):
    synthia.list_pairs(str(tmp_path))
  (tmp_path / 'RGB' / '0000000.png').write_bytes(b'')
  with pytest.raises(DataError, match=r'RGB/0000000\.png.*not a PNG'):
    synthia.list_pairs(str(tmp_path))


def test_wrong_folders_are_errors_that_say_the_layout(tmp_path):
  with pytest.raises(MissingFileError, match='does not exist.*RGB/0000000.png'):
    synthia.list_pairs(str(tmp_path / 'absent'))
  (tmp_path / 'RGB').mkdir()
  with pytest.raises(MissingFileError, match=r"no 'GT/LABELS' folder.*synthia_dir"):
    synthia.list_pairs(str(tmp_path))
  (tmp_path / 'GT' / 'LABELS').mkdir(parents=True)
  with pytest.raises(DataError, match='No PNG images'):
    synthia.list_pairs(str(tmp_path))
