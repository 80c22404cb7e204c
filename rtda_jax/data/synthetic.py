"""The embedded benchmark: procedural street scenes in two (or more) visual domains, in GTA5 / Cityscapes file layouts.

Scenes hold all 19 Cityscapes classes in perspective (synthetic_draw.py: camera, street, buildings, rendering;
synthetic_styles.py: the `Style` of each domain and the named styles;
synthetic_objects.py: furniture, vehicles and people). A `Style` renders them: palette, textures, lighting, sensor
effects and layout statistics. The source style ('gta5') is saturated, textured, evenly lit and sharp; the target style
('cityscapes') has other colours and textures, light falling off across the frame, cast shadows, blur, vignetting,
sensor noise, a longer lens and an ego-vehicle bonnet. Colours vary per instance and overlap between classes, so only
shape and context identify a class. Image i of a domain is a function of (seed, style name, split, i) alone.

  write_gta5(out_dir, num_images, size, seed)         -> images/00001.png, labels/00001.png ('P' label ids)
  write_cityscapes(out_dir, num_train, num_val, ...)  -> leftImg8bit/<split>/<city>/..., gtFine/<split>/<city>/...
  write_synthia(out_dir, num_images, size, seed)      -> RGB/0000000.png, GT/LABELS/0000000.png (16-bit SYNTHIA ids)
  ensure_domains(config.data, domains)                 -> {domain: folder}, each embedded one generated once
  ensure_benchmark(config.data)                        -> (gta5 folder, cityscapes folder), generated once
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import time
import zlib
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from rtda_jax import data as data_lib
from rtda_jax import files, labels
from rtda_jax.data import synthetic_draw, synthetic_objects, synthia
from rtda_jax.data.synthetic_styles import STYLES, Style, get_style  # noqa: F401 (re-exported)

GENERATOR_VERSION = 2  # bump when the drawing code changes what a seed produces: benchmarks are then regenerated
MARKER = 'benchmark.json'
TRAIN_CITIES = ('aachen', 'bochum', 'bremen')
VAL_CITIES = ('frankfurt', 'lindau', 'munster')


def sample_rng(seed: int, style_name: str, split: str, index: int) -> np.random.Generator:
  """The generator of one image: a function of (seed, domain, split, index) only."""
  return np.random.default_rng([seed, zlib.crc32(style_name.encode()), zlib.crc32(split.encode()), index])


def generate(style: Style | str, seed: int, split: str, index: int,
             size: tuple[int, int] = (128, 256)) -> tuple[np.ndarray, np.ndarray]:
  """Image `index` of a domain: ([H, W, 3] uint8 RGB, [H, W] uint8 Cityscapes label ids)."""
  style = get_style(style)
  scene = synthetic_draw.Scene(style, sample_rng(seed, style.name, split, index), tuple(size))
  synthetic_objects.build(scene)
  part_ids = scene.rasterise()  # [H, W] int32
  return synthetic_draw.shade(scene, part_ids), synthetic_draw.label_map(scene, part_ids)


# ---- files --------------------------------------------------------------------------------------------------------

def _label_palette() -> list[int]:
  """768 palette entries: index = Cityscapes label id, colour = its Cityscapes colour (like GTA5's label PNGs)."""
  pal = np.zeros((256, 3), np.uint8)
  for l in labels.LABELS:
    if l.id >= 0:
      pal[l.id] = l.color
  return pal.ravel().tolist()


_PALETTE = _label_palette()


def _cityscapes_to_synthia() -> np.ndarray:
  """[256] uint16: Cityscapes label id -> the SYNTHIA class id of the same train id; 0 (void) for the rest."""
  by_train = {l.train_id: l.id for l in labels.SYNTHIA_LABELS if l.train_id != labels.IGNORE}
  lut = np.zeros(256, np.uint16)
  for l in labels.LABELS:
    if l.id >= 0 and l.train_id in by_train:
      lut[l.id] = by_train[l.train_id]
  return lut


CITYSCAPES_TO_SYNTHIA = _cityscapes_to_synthia()


def _write_one(task: tuple) -> None:
  """Generates one image and writes its two PNGs (a multiprocessing task)."""
  style, seed, split, index, size, image_path, label_path, label_mode = task
  image, label = generate(style, seed, split, index, size)
  Image.fromarray(image).save(image_path, compress_level=1)
  if label_mode == 'synthia':  # 16-bit RGB, SYNTHIA class id in the first channel
    synthia.write_label(label_path, CITYSCAPES_TO_SYNTHIA[label])
    return
  label_img = Image.fromarray(label)  # mode 'L'
  if label_mode == 'P':
    label_img.putpalette(_PALETTE)  # turns it into a 'P' image whose indices are the label ids
  label_img.save(label_path)


def default_workers() -> int:
  return max(1, min(2, os.cpu_count() or 1))


def _run(tasks: list[tuple], workers: int | None, desc: str) -> None:
  for d in {os.path.dirname(p) for t in tasks for p in t[5:7]}:
    os.makedirs(d, exist_ok=True)
  workers = default_workers() if workers is None else workers
  bar = tqdm(total=len(tasks), desc=desc, unit='img', disable=not tasks)
  if workers <= 1 or len(tasks) < 8:
    for t in tasks:
      _write_one(t)
      bar.update()
  else:
    # fork is cheap, but unsafe once a multithreaded library such as JAX is loaded: then start fresh interpreters.
    method = 'spawn' if ('jax' in sys.modules or 'tensorflow' in sys.modules) else 'fork'
    with multiprocessing.get_context(method).Pool(workers) as pool:
      for _ in pool.imap_unordered(_write_one, tasks, chunksize=max(1, min(16, len(tasks) // (4 * workers)))):
        bar.update()
  bar.close()


def write_gta5(out_dir: str, num_images: int, size: tuple[int, int] = (128, 256), seed: int = 0,
               style: Style | str = 'gta5', workers: int | None = None) -> str:
  """Writes `out_dir/images/00001.png` (RGB) and `out_dir/labels/00001.png` ('P', index = label id), ... ."""
  style = get_style(style)
  tasks = [(style, seed, 'train', i, tuple(size), os.path.join(out_dir, 'images', f'{i + 1:05d}.png'),
            os.path.join(out_dir, 'labels', f'{i + 1:05d}.png'), 'P') for i in range(num_images)]
  _run(tasks, workers, f'synthetic GTA5 ({style.name})')
  return out_dir


def write_synthia(out_dir: str, num_images: int, size: tuple[int, int] = (128, 256), seed: int = 0,
                  style: Style | str = 'synthia', workers: int | None = None) -> str:
  """Writes SYNTHIA-RAND-CITYSCAPES' layout: `out_dir/RGB/0000000.png` and `out_dir/GT/LABELS/0000000.png` (16-bit
  RGB, the SYNTHIA class id in the first channel, as the real labels)."""
  style = get_style(style)
  tasks = [(style, seed, 'train', i, tuple(size), os.path.join(out_dir, synthia.IMAGE_DIR, f'{i:07d}.png'),
            os.path.join(out_dir, synthia.LABEL_DIR, f'{i:07d}.png'), 'synthia') for i in range(num_images)]
  _run(tasks, workers, f'synthetic SYNTHIA ({style.name})')
  return out_dir


def cityscapes_stems(split: str, num: int) -> list[tuple[str, str]]:
  """(city, file stem) of each image of a split, e.g. ('aachen', 'aachen_000000_000019'); cities in blocks."""
  cities = TRAIN_CITIES if split == 'train' else VAL_CITIES
  out = []
  for j in range(num):
    c = j * len(cities) // num
    first = -(-c * num // len(cities))  # first index of city c
    out.append((cities[c], f'{cities[c]}_{j - first:06d}_{19:06d}'))
  return out


def write_cityscapes(out_dir: str, num_train: int, num_val: int, size: tuple[int, int] = (128, 256), seed: int = 0,
                     style: Style | str = 'cityscapes', workers: int | None = None) -> str:
  """Writes leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png and gtFine/.../<stem>_gtFine_labelIds.png ('L')."""
  style = get_style(style)
  tasks = []
  for split, num in (('train', num_train), ('val', num_val)):
    for j, (city, stem) in enumerate(cityscapes_stems(split, num)):
      tasks.append((style, seed, split, j, tuple(size),
                    os.path.join(out_dir, 'leftImg8bit', split, city, f'{stem}_leftImg8bit.png'),
                    os.path.join(out_dir, 'gtFine', split, city, f'{stem}_gtFine_labelIds.png'), 'L'))
  _run(tasks, workers, f'synthetic Cityscapes ({style.name})')
  return out_dir


# ---- the benchmark of a config --------------------------------------------------------------------------------------

# The Style fields of generator version 2. A field added since enters a style's fingerprint only where the style sets
# it to other than its default, so adding a field does not regenerate the benchmarks of the styles that leave it be.
_V2_FIELDS = frozenset((
    'name', 'palette', 'textures', 'color_jitter', 'brightness_jitter', 'texture_scale', 'tile_size', 'light_level',
    'light_gradient', 'shadow_prob', 'shadow_strength', 'emissive_gain', 'fog_visibility', 'fog_color', 'tint',
    'saturation', 'contrast', 'gamma', 'blur', 'vignetting', 'noise', 'horizon', 'focal', 'object_scale',
    'road_width', 'sidewalk_width', 'building_height', 'side_probs', 'counts', 'pole_spacing', 'crosswalk', 'parking',
    'ego_vehicle'))


def _style_fingerprint(style: Style) -> int:
  """A hash of everything that decides how a style draws (the benchmark folder is regenerated when it changes)."""
  defaults = {f.name: f.default for f in dataclasses.fields(Style)}
  fields = {k: v for k, v in dataclasses.asdict(style).items() if k in _V2_FIELDS or v != defaults[k]}
  return zlib.crc32(repr(fields).encode())


def _read_marker(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _ensure(out_dir: str, params: dict, write) -> str:
  """Reuses out_dir if its marker matches `params`; else writes a fresh copy beside it and swaps it in. Under a
  lock (`.<name>.lock` beside it): processes of one host that find it missing at once write it once, the others
  wait."""
  params = json.loads(json.dumps(params))  # tuples -> lists, as read back
  if _read_marker(os.path.join(out_dir, MARKER)) == params:
    return out_dir
  parent, name = os.path.split(os.path.abspath(out_dir))
  with files.file_lock(os.path.join(parent, f'.{name}.lock')):
    if _read_marker(os.path.join(out_dir, MARKER)) == params:  # written by another process while this one waited
      return out_dir
    tmp = files.temp_dir_beside(out_dir)
    try:
      write(tmp)
      with open(os.path.join(tmp, MARKER), 'w') as f:  # last: a folder with a marker is complete
        json.dump(params, f, indent=1)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    data_lib.replace_folder(tmp, out_dir)
  return out_dir


def _ensure_source(layout: str, style_name: str, write, data_config, root: str, workers: int | None) -> str:
  """A one-split source domain (GTA5's or SYNTHIA's layout): `data.synthetic.num_<layout>` images of
  `data.synthetic.<layout>_size`, written by `write` (write_gta5 / write_synthia)."""
  syn = data_config.synthetic
  style, size, num = get_style(style_name), tuple(syn[f'{layout}_size']), syn[f'num_{layout}']
  params = dict(version=GENERATOR_VERSION, layout=layout, style=style.name, style_hash=_style_fingerprint(style),
                seed=syn.seed, size=size, num_images=num)
  return _ensure(os.path.join(root, layout), params, lambda d: write(d, num, size, syn.seed, style, workers))


def _ensure_gta5(data_config, root: str, workers: int | None) -> str:
  style = getattr(data_config.synthetic, 'source_style', 'gta5')
  return _ensure_source('gta5', style, write_gta5, data_config, root, workers)


def _ensure_synthia(data_config, root: str, workers: int | None) -> str:
  return _ensure_source('synthia', 'synthia', write_synthia, data_config, root, workers)


def _ensure_cityscapes(data_config, root: str, workers: int | None) -> str:
  syn = data_config.synthetic
  style = get_style(syn.target_style)
  params = dict(version=GENERATOR_VERSION, layout='cityscapes', style=style.name,
                style_hash=_style_fingerprint(style), seed=syn.seed, size=tuple(syn.cityscapes_size),
                num_train=syn.num_cityscapes_train, num_val=syn.num_cityscapes_val)
  return _ensure(os.path.join(root, 'cityscapes'), params, lambda d: write_cityscapes(
      d, syn.num_cityscapes_train, syn.num_cityscapes_val, tuple(syn.cityscapes_size), syn.seed, style, workers))


_ENSURE = {'gta5': _ensure_gta5, 'cityscapes': _ensure_cityscapes, 'synthia': _ensure_synthia}


def ensure_domains(data_config, domains, workers: int | None = None) -> dict[str, str]:
  """{domain: raw folder} for `domains` ('gta5', 'cityscapes', 'synthia'): `data.<domain>_dir` where set, else the
  embedded benchmark's `<root>/synthetic/<domain>`, generated unless a complete one with the same parameters is
  already there. Only the domains asked for are generated (a GTA5 run never writes the SYNTHIA benchmark)."""
  root = os.path.join(data_config.root, 'synthetic')
  out = {}
  for domain in domains:
    if domain not in _ENSURE:
      raise ValueError(f'Unknown dataset {domain!r}; choose one of {tuple(_ENSURE)}.')
    out[domain] = data_config.get(f'{domain}_dir') or _ENSURE[domain](data_config, root, workers)
  return out


def ensure_benchmark(data_config, workers: int | None = None) -> tuple[str, str]:
  """(GTA5 folder, Cityscapes folder) for `config.data`: the real folders where set, else the embedded benchmark
  under <root>/synthetic/, generated unless a complete one with the same parameters is already there."""
  dirs = ensure_domains(data_config, ('gta5', 'cityscapes'), workers)
  return dirs['gta5'], dirs['cityscapes']


def measure_speed(size: tuple[int, int] = (128, 256), num_images: int = 20, style: Style | str = 'gta5',
                  write_dir: str | None = None) -> float:
  """Images per second of one process: generation, plus PNG writing when `write_dir` is given."""
  start = time.perf_counter()
  for i in range(num_images):
    if write_dir:
      os.makedirs(write_dir, exist_ok=True)
      _write_one((get_style(style), 0, 'speed', i, size, os.path.join(write_dir, f'{i}.png'),
                  os.path.join(write_dir, f'{i}_label.png'), 'L'))
    else:
      generate(style, 0, 'speed', i, size)
  return num_images / (time.perf_counter() - start)


if __name__ == '__main__':  # python -m rtda_jax.data.synthetic [H W [N]]: generation speed of each style
  h, w = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (128, 256)
  n = int(sys.argv[3]) if len(sys.argv) > 3 else 20
  for name in STYLES:
    print(f'{name:>10} {h}x{w}: {measure_speed((h, w), n, name):.1f} images/s (one process, no PNG writing)')
