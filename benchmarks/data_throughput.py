"""Data throughput: TFDS build speed and grain decode+resize speed, at the demo and at the course resolutions.

    python benchmarks/data_throughput.py                      # both scales (a few minutes on 2 CPU cores)
    python benchmarks/data_throughput.py --scales=demo --json=/tmp/data.json

Raw folders of street-like random images (smooth colour regions, sensor noise, blocky label maps) are written in the
GTA5 / Cityscapes layouts at the real datasets' raw sizes (GTA5 1052x1914, Cityscapes 1024x2048; the demo: 128x256),
built with `builders.build` (images/s, including the validation pass) and read back with `pipeline.train_loader`
with 0 worker processes (= the rate of one worker) and with 2 workers. Nothing here touches `data/`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from rtda_jax.data import builders, pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position

# scale -> domain -> (raw [H, W], stored [H, W], number of images)
SCALES = {
    'demo': {'gta5': ((128, 256), (128, 256), 400), 'cityscapes': ((128, 256), (128, 256), 400)},
    'paper': {'gta5': ((1052, 1914), (720, 1280), 100), 'cityscapes': ((1024, 2048), (512, 1024), 100)},
}
LABEL_IDS = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33, 0], np.uint8)


def street_like(seed: int, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """[H, W, 3] uint8 image (smooth regions + noise) and [H, W] uint8 label ids (blocky regions)."""
  rng = np.random.default_rng(seed)
  h, w = hw
  low = Image.fromarray(rng.integers(0, 256, (max(2, h // 48), max(2, w // 48), 3), dtype=np.uint8))
  image = np.asarray(low.resize((w, h), Image.BILINEAR)).astype(np.int16)
  image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
  ids = Image.fromarray(LABEL_IDS[rng.integers(0, len(LABEL_IDS), (max(2, h // 24), max(2, w // 24)))])
  return image, np.asarray(ids.resize((w, h), Image.NEAREST))


def _write_one(args: tuple[str, int, tuple[int, int], str, str]) -> None:
  domain, i, hw, image_path, label_path = args
  image, ids = street_like(i, hw)
  for path in (image_path, label_path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(image_path)
  label = Image.fromarray(ids)
  if domain == 'gta5':  # GTA5 labels are palette images whose indices are the ids
    label = label.convert('P')
    label.putdata(ids.reshape(-1).tolist())
  label.save(label_path)


def write_raw(domain: str, root: str, hw: tuple[int, int], n: int) -> None:
  """n images in the raw layout of `domain` (Cityscapes: all in 'train', plus 2 in 'val')."""
  jobs = []
  for i in range(n + (2 if domain == 'cityscapes' else 0)):
    if domain == 'gta5':
      jobs.append((domain, i, hw, f'{root}/images/{i + 1:05d}.png', f'{root}/labels/{i + 1:05d}.png'))
    else:
      split, stem = ('train' if i < n else 'val'), f'bench_{i:06d}_000019'
      jobs.append((domain, i, hw, f'{root}/leftImg8bit/{split}/bench/{stem}_leftImg8bit.png',
                   f'{root}/gtFine/{split}/bench/{stem}_gtFine_labelIds.png'))
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    list(pool.map(_write_one, jobs))


def loader_rate(cfg, domain: str, shape: tuple[int, int], workers: int, batch: int, seconds: float) -> float:
  """Images/s of train_loader over >= `seconds` (and >= 5 batches) after 2 warm-up batches (start-up excluded)."""
  it = pipeline.train_loader(cfg, domain, 'train', batch, seed=0, shape=shape, num_workers=workers)
  for _ in range(2):
    next(it)
  start, count = time.perf_counter(), 0
  while count < 5 or time.perf_counter() - start < seconds:
    next(it)
    count += 1
  rate = count * batch / (time.perf_counter() - start)
  del it
  gc.collect()
  return rate


def run(scale: str, workdir: str, workers: list[int], seconds: float) -> list[dict]:
  rows = []
  cfg = common.get_base_config().data
  cfg.root = os.path.join(workdir, scale, 'data')
  for domain, (raw_hw, stored, n) in SCALES[scale].items():
    raw = os.path.join(workdir, scale, domain)
    setattr(cfg, f'{domain}_dir', raw)
    setattr(cfg, f'{domain}_size', stored)
    t = time.perf_counter()
    write_raw(domain, raw, raw_hw, n)
    print(f'[{scale}] wrote {n} raw {domain} images {raw_hw} in {time.perf_counter() - t:.1f}s', flush=True)
    t = time.perf_counter()
    builders.build(domain, raw, builders.data_dir_for(cfg, domain), stored)
    total = n + (2 if domain == 'cityscapes' else 0)
    build_rate = total / (time.perf_counter() - t)
    rows.append({'scale': scale, 'domain': domain, 'what': f'build {raw_hw[0]}x{raw_hw[1]} -> '
                 f'{stored[0]}x{stored[1]} ({builders.NUM_THREADS} threads)', 'images_per_s': build_rate})
    print(f'  {rows[-1]}', flush=True)
    half = (stored[0] // 2, stored[1] // 2)
    batch = 8
    for mode, shape, label in (('resize', stored, 'decode'), ('resize', half, f'decode+resize to {half[0]}x{half[1]}'),
                               ('crop', half, f'decode+crop {half[0]}x{half[1]}')):
      cfg.resize_mode = mode
      for w in workers:
        rate = loader_rate(cfg, domain, shape, w, batch, seconds)
        who = 'in-process (= 1 worker)' if w == 0 else f'{w} workers'
        rows.append({'scale': scale, 'domain': domain, 'what': f'pipeline {label} at {stored[0]}x{stored[1]}, '
                     f'{who}', 'images_per_s': rate})
        print(f'  {rows[-1]}', flush=True)
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--scales', default='demo,paper', help='comma-separated: demo, paper')
  parser.add_argument('--workers', default='0,2', help='comma-separated worker counts for the pipeline')
  parser.add_argument('--workdir', default=None, help='where to write raw and built data (default: a temp dir)')
  parser.add_argument('--seconds', type=float, default=4.0, help='measuring time per pipeline row')
  parser.add_argument('--json', default=None, help='also write the rows to this JSON file')
  args = parser.parse_args()
  workers = [int(w) for w in args.workers.split(',')]
  with tempfile.TemporaryDirectory(prefix='rtda_data_bench_') as tmp:
    rows = []
    for scale in args.scales.split(','):
      rows += run(scale, args.workdir or tmp, workers, args.seconds)
  print(f'\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible')
  print('| scale | dataset | measurement | images/s |\n| --- | --- | --- | ---: |')
  for r in rows:
    print(f"| {r['scale']} | {r['domain']} | {r['what']} | {r['images_per_s']:.1f} |")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'cpu_count': os.cpu_count(), 'rows': rows}, f, indent=2)


if __name__ == '__main__':
  main()
