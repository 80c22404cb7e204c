"""The Cityscapes class table: names, label ids, train ids, colours, and the raw-id -> train-id lookup.

GTA5 label PNGs hold the same Cityscapes label ids, so one table serves both datasets. Train ids are 0..18;
every other raw id (including -1, 0..6 and anything outside 0..33) maps to IGNORE = 255. SYNTHIA has its own class
ids (SYNTHIA_LABELS, SYNTHIA_TO_TRAIN) and the 16-/13-class evaluation sets of SYNTHIA -> Cityscapes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

IGNORE = 255
NUM_CLASSES = 19


@dataclasses.dataclass(frozen=True)
class Label:
  name: str
  id: int  # Cityscapes label id, as stored in gtFine_labelIds / GTA5 label PNGs
  train_id: int  # 0..18, or IGNORE
  color: tuple[int, int, int]


# The full Cityscapes label table (cityscapesscripts.helpers.labels), ids 0..33 and the license plate (-1).
LABELS: tuple[Label, ...] = (
    Label('unlabeled', 0, IGNORE, (0, 0, 0)),
    Label('ego vehicle', 1, IGNORE, (0, 0, 0)),
    Label('rectification border', 2, IGNORE, (0, 0, 0)),
    Label('out of roi', 3, IGNORE, (0, 0, 0)),
    Label('static', 4, IGNORE, (0, 0, 0)),
    Label('dynamic', 5, IGNORE, (111, 74, 0)),
    Label('ground', 6, IGNORE, (81, 0, 81)),
    Label('road', 7, 0, (128, 64, 128)),
    Label('sidewalk', 8, 1, (244, 35, 232)),
    Label('parking', 9, IGNORE, (250, 170, 160)),
    Label('rail track', 10, IGNORE, (230, 150, 140)),
    Label('building', 11, 2, (70, 70, 70)),
    Label('wall', 12, 3, (102, 102, 156)),
    Label('fence', 13, 4, (190, 153, 153)),
    Label('guard rail', 14, IGNORE, (180, 165, 180)),
    Label('bridge', 15, IGNORE, (150, 100, 100)),
    Label('tunnel', 16, IGNORE, (150, 120, 90)),
    Label('pole', 17, 5, (153, 153, 153)),
    Label('polegroup', 18, IGNORE, (153, 153, 153)),
    Label('traffic light', 19, 6, (250, 170, 30)),
    Label('traffic sign', 20, 7, (220, 220, 0)),
    Label('vegetation', 21, 8, (107, 142, 35)),
    Label('terrain', 22, 9, (152, 251, 152)),
    Label('sky', 23, 10, (70, 130, 180)),
    Label('person', 24, 11, (220, 20, 60)),
    Label('rider', 25, 12, (255, 0, 0)),
    Label('car', 26, 13, (0, 0, 142)),
    Label('truck', 27, 14, (0, 0, 70)),
    Label('bus', 28, 15, (0, 60, 100)),
    Label('caravan', 29, IGNORE, (0, 0, 90)),
    Label('trailer', 30, IGNORE, (0, 0, 110)),
    Label('train', 31, 16, (0, 80, 100)),
    Label('motorcycle', 32, 17, (0, 0, 230)),
    Label('bicycle', 33, 18, (119, 11, 32)),
    Label('license plate', -1, IGNORE, (0, 0, 142)),
)

TRAIN_LABELS: tuple[Label, ...] = tuple(sorted((l for l in LABELS if l.train_id != IGNORE), key=lambda l: l.train_id))
CLASS_NAMES: tuple[str, ...] = tuple(l.name for l in TRAIN_LABELS)
# [19, 3] uint8: colour of each train id.
PALETTE = np.array([l.color for l in TRAIN_LABELS], dtype=np.uint8)
# Label id of each train id (the inverse lookup, to write predictions as label-id PNGs).
TRAIN_ID_TO_LABEL_ID = np.array([l.id for l in TRAIN_LABELS], dtype=np.uint8)


def _to_train_lut(labels: tuple[Label, ...]) -> np.ndarray:
  """[256] uint8, read-only: label id -> train id of `labels` (ids outside 0..255 skipped, the rest IGNORE)."""
  lut = np.full(256, IGNORE, dtype=np.uint8)
  for l in labels:
    if 0 <= l.id < 256:
      lut[l.id] = l.train_id
  lut.setflags(write=False)
  return lut


# [256] uint8 lookup tables: raw label id -> train id. GTA5 stores Cityscapes label ids, so the tables are equal;
# they are kept apart so a dataset with its own ids (e.g. SYNTHIA) can get its own table.
CITYSCAPES_TO_TRAIN = _to_train_lut(LABELS)
GTA5_TO_TRAIN = _to_train_lut(LABELS)

# SYNTHIA-RAND-CITYSCAPES class ids (the first channel of its 16-bit GT/LABELS PNGs; its README lists them with these
# GT/COLOR colours) and the Cityscapes train id of each: the 16 classes SYNTHIA shares with Cityscapes. Terrain (16),
# truck (18) and train (20) are ignored as in the 16-class protocol (valeoai/ESL advent/dataset/synthia.py,
# num_classes=16; the 19-class tables of e.g. RoyalVane/CLAN dataset/synthia_dataset.py map them to 9, 14, 16 and
# agree on the other 16), and so are void, parking-slot, road-work and lanemarking. `id` is the SYNTHIA id here.
SYNTHIA_LABELS: tuple[Label, ...] = (
    Label('void', 0, IGNORE, (0, 0, 0)),
    Label('sky', 1, 10, (70, 130, 180)),
    Label('building', 2, 2, (70, 70, 70)),
    Label('road', 3, 0, (128, 64, 128)),
    Label('sidewalk', 4, 1, (244, 35, 232)),
    Label('fence', 5, 4, (64, 64, 128)),
    Label('vegetation', 6, 8, (107, 142, 35)),
    Label('pole', 7, 5, (153, 153, 153)),
    Label('car', 8, 13, (0, 0, 142)),
    Label('traffic sign', 9, 7, (220, 220, 0)),
    Label('pedestrian', 10, 11, (220, 20, 60)),
    Label('bicycle', 11, 18, (119, 11, 32)),
    Label('motorcycle', 12, 17, (0, 0, 230)),
    Label('parking-slot', 13, IGNORE, (250, 170, 160)),
    Label('road-work', 14, IGNORE, (128, 64, 64)),
    Label('traffic light', 15, 6, (250, 170, 30)),
    Label('terrain', 16, IGNORE, (152, 251, 152)),
    Label('rider', 17, 12, (255, 0, 0)),
    Label('truck', 18, IGNORE, (0, 0, 70)),
    Label('bus', 19, 15, (0, 60, 100)),
    Label('train', 20, IGNORE, (0, 80, 100)),
    Label('wall', 21, 3, (102, 102, 156)),
    Label('lanemarking', 22, IGNORE, (102, 102, 156)),
)
SYNTHIA_MAX_ID = max(l.id for l in SYNTHIA_LABELS)  # 22: a label id above it is not a SYNTHIA class


# [256] uint8: SYNTHIA class id -> Cityscapes train id (ids above SYNTHIA_MAX_ID -> IGNORE; readers reject them).
SYNTHIA_TO_TRAIN = _to_train_lut(SYNTHIA_LABELS)
# The evaluation class sets of SYNTHIA -> Cityscapes, in train-id order: the 16 classes SYNTHIA labels (mIoU) and
# the 13 of mIoU* (without wall, fence and pole), the two figures SYNTHIA -> Cityscapes papers report.
SYNTHIA16_CLASS_NAMES: tuple[str, ...] = tuple(
    CLASS_NAMES[t] for t in sorted({l.train_id for l in SYNTHIA_LABELS if l.train_id != IGNORE}))
SYNTHIA13_CLASS_NAMES: tuple[str, ...] = tuple(n for n in SYNTHIA16_CLASS_NAMES if n not in ('wall', 'fence', 'pole'))


def to_train_ids(raw: np.ndarray, lut: np.ndarray = CITYSCAPES_TO_TRAIN) -> np.ndarray:
  """Maps raw label ids of any integer dtype to train ids (uint8); ids outside 0..255 become IGNORE."""
  raw = np.asarray(raw)
  if raw.dtype == np.uint8:
    return lut[raw]
  raw = raw.astype(np.int64)
  out = np.full(raw.shape, IGNORE, dtype=np.uint8)
  inside = (raw >= 0) & (raw < lut.shape[0])
  out[inside] = lut[raw[inside]]
  return out


def colorize(train_ids: np.ndarray) -> np.ndarray:
  """[..., H, W] train ids -> [..., H, W, 3] uint8 Cityscapes colours; IGNORE (and any id >= 19) is black."""
  train_ids = np.asarray(train_ids)
  table = np.zeros((256, 3), dtype=np.uint8)
  table[:NUM_CLASSES] = PALETTE
  return table[np.clip(train_ids, 0, 255).astype(np.uint8)]
