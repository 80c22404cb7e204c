"""benchmarks/translation_figure.py (the README's translation picture): rows are the first folder's images in name
order, columns the folders, each cell resized to the row height keeping its aspect ratio, titles on a strip above;
a name missing from a later folder is an error naming both folders."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tests.script_utils import load_benchmark_script


def module():
  return load_benchmark_script('translation_figure')


def write(folder, name, colour, size=(32, 16)):
  os.makedirs(folder, exist_ok=True)
  Image.new('RGB', size, colour).save(os.path.join(folder, name))


def test_grid_geometry_and_cell_placement(tmp_path):
  fig = module()
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  for name, colour in (('x_0.png', (255, 0, 0)), ('x_1.png', (0, 255, 0))):
    write(a, name, colour)
  write(b, 'x_0.png', (0, 0, 255), size=(64, 32))  # a translation at another size: resized to the row height
  write(b, 'x_1.png', (255, 255, 0), size=(64, 32))
  names = fig.image_names(a)
  assert names == ['x_0.png', 'x_1.png']
  image = np.asarray(fig.figure([a, b], names, height=16, titles=['original', 'to day']))
  # width: two 32-px columns (64x32 resized to 16 high is 32 wide) and one gap; height: title strip + 2 rows + gap
  assert image.shape == (fig.TITLE_HEIGHT + 2 * 16 + fig.GAP, 32 + fig.GAP + 32, 3)
  top = fig.TITLE_HEIGHT
  centre = lambda r, c: tuple(image[top + r * (16 + fig.GAP) + 8, c * (32 + fig.GAP) + 16])
  assert centre(0, 0) == (255, 0, 0) and centre(1, 0) == (0, 255, 0)
  assert centre(0, 1) == (0, 0, 255) and centre(1, 1) == (255, 255, 0)
  strip = image[:top]
  assert (strip < 128).any(), 'the titles drew nothing'


def test_missing_translation_names_both_folders(tmp_path):
  fig = module()
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  write(a, 'x_0.png', (1, 2, 3))
  write(b, 'other.png', (1, 2, 3))
  with pytest.raises(SystemExit) as error:
    fig.figure([a, b], ['x_0.png'], height=16, titles=[])
  assert 'x_0.png' in str(error.value) and a in str(error.value) and b in str(error.value)
