"""`--mode=translate`: a trained translator (configs/translate.py) writes the translated source split as a dataset
folder in the GTA5 layout, which any config then trains on with `--config.data.gta5_dir=<that folder>`.

Every image of the source's raw folder (data.gta5_dir, or the embedded benchmark's) goes through G_st of the run's last
(or `eval.checkpoint`'s) checkpoint and is written as `images/<same name>.png`; its label is copied byte for byte to
`labels/<same name>.png`. The split is streamed in batches of `data.eval_batch_size` (no more than one batch of images
in memory), batches sharded over the device mesh. The generator runs at `translate.inference_size`: 'stored' (the
image resized to data.gta5_size as the builder stores it, i.e. the scale the translator trained at, and the output
resized back to the raw size, both bilinear) or 'raw' (the raw size); an image whose H or W is not a multiple of 4 is
reflection-padded at the bottom and right and the output cropped back. The folder is written beside the target and
swapped in when complete; `translate.json` in it records the translator, its step and the settings, and
<workdir>/translate_samples/ gets a few original | translated strips.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from rtda_jax import data as data_lib
from rtda_jax import errors, files, parallel
from rtda_jax.methods import base

INFO_FILE = 'translate.json'
INFERENCE_SIZES = ('stored', 'raw')
SAMPLES_DIR = 'translate_samples'
NUM_THREADS = min(8, os.cpu_count() or 1)  # Pillow releases the GIL while it decodes, resizes and encodes


def output_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`translate.output_dir`, or <workdir>/translated_gta5."""
  return config.translate.output_dir or os.path.join(workdir, 'translated_gta5')


def pad_to_multiple(images: np.ndarray, multiple: int = 4) -> np.ndarray:
  """[B, H, W, 3] -> [B, H', W', 3] with H', W' the next multiples of `multiple`, reflection-padded at the bottom and
  the right (what a fully convolutional generator with two stride-2 steps needs)."""
  h, w = images.shape[1:3]
  ph, pw = -h % multiple, -w % multiple
  if not ph and not pw:
    return images
  return np.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode='reflect')


def _read(path: str, size: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
  """(RGB image [H, W, 3] uint8, resized bilinear to `size` = (H, W) where given, and the raw (W, H))."""
  with Image.open(path) as im:
    rgb = im.convert('RGB')
  raw = rgb.size
  if size is not None and rgb.size != (size[1], size[0]):
    rgb = rgb.resize((size[1], size[0]), Image.BILINEAR)  # as builders.convert_example stores it
  return np.asarray(rgb), raw


def _write(image: np.ndarray, raw_size: tuple[int, int], image_path: str, label_src: str, label_dst: str) -> None:
  """Writes the translated image at its raw size (W, H) and copies the label byte for byte."""
  from rtda_jax.data import builders
  im = Image.fromarray(image)
  if im.size != tuple(raw_size):
    im = im.resize(tuple(raw_size), Image.BILINEAR)
  with open(image_path, 'wb') as f:
    f.write(builders.encode_png(np.asarray(im)))
  shutil.copyfile(label_src, label_dst)


def _groups(images: Sequence[np.ndarray]) -> Iterator[list[int]]:
  """Indices of `images` grouped by shape, in order of first appearance."""
  by_shape: dict[tuple[int, ...], list[int]] = {}
  for i, im in enumerate(images):
    by_shape.setdefault(im.shape, []).append(i)
  yield from by_shape.values()


def translate_batch(fn: Any, params: Any, images: list[np.ndarray], batch_size: int,
                    mesh: jax.sharding.Mesh) -> list[np.ndarray]:
  """`fn(params, uint8 [batch_size, H, W, 3]) -> uint8 [batch_size, H, W, 3]` on each same-shape group of `images`
  (padded to multiples of 4 and to `batch_size` images, so the jitted function compiles once per image shape);
  returns the translated images in input order, each cropped to its shape."""
  out: list[np.ndarray | None] = [None] * len(images)
  for group in _groups(images):
    h, w = images[group[0]].shape[:2]
    batch = pad_to_multiple(np.stack([images[i] for i in group]))  # [n, H', W', 3]
    batch = np.concatenate([batch, np.zeros((batch_size - len(group), *batch.shape[1:]), np.uint8)])
    result = parallel.local_rows(fn(params, parallel.shard_batch(batch, mesh)))
    for j, i in enumerate(group):
      out[i] = np.asarray(result[j, :h, :w])
  return out


def load_translator(config: ml_collections.ConfigDict, workdir: str) -> tuple[Any, Any, int]:
  """(method, G_st's params, step) of the last (or `eval.checkpoint`'s) checkpoint of the translator run `workdir`."""
  from rtda_jax import checkpointing, methods
  if config.method != 'translate':
    raise errors.ConfigError(f'--mode=translate needs a translator: config.method is {config.method!r}; use '
                             'configs/translate.py (with the same presets as the run).')
  if not checkpointing.Checkpointer.has_checkpoint(workdir):
    raise errors.MissingFileError(f'No checkpoint in {workdir}/checkpoints/last: train the translator first '
                                  f'(python main.py --config=configs/translate.py --workdir={workdir}).')
  method = methods.get_method(config)
  target = method.init(jax.random.PRNGKey(config.seed), base.train_shapes(config))
  ckpt = checkpointing.Checkpointer(workdir)
  try:
    state, meta = ckpt.restore(target, step=config.eval.checkpoint)
  finally:
    ckpt.close()
  return method, jax.device_get(state.g_st.params), int(meta['step'])


def write_translated(method: Any, params: Any, config: ml_collections.ConfigDict, out_dir: str,
                     mesh: jax.sharding.Mesh, samples_dir: str | None = None,
                     about: dict[str, Any] | None = None) -> dict[str, Any]:
  """Translates every source image into `out_dir` (GTA5 layout, labels copied); returns what translate.json records
  (`about`, e.g. the translator's workdir and step, then the counts and settings)."""
  from rtda_jax.data import builders, synthetic
  t = config.translate
  if t.inference_size not in INFERENCE_SIZES:
    raise errors.ConfigError(f'translate.inference_size={t.inference_size!r}: choose one of {INFERENCE_SIZES}.')
  if config.data.source != 'gta5':
    raise errors.ConfigError(f'--mode=translate writes the GTA5 layout from a GTA5-layout source; config.data.source '
                             f'is {config.data.source!r}.')
  raw_dir = synthetic.ensure_benchmark(config.data)[0]
  if os.path.abspath(raw_dir) == os.path.abspath(out_dir):
    raise errors.ConfigError(f'translate.output_dir={out_dir!r} is the source folder itself; choose another folder.')
  examples = builders.find_examples('gta5', raw_dir)['train']
  batch_size = int(config.data.eval_batch_size)
  parallel.check_batch_size(batch_size, mesh, 'data.eval_batch_size')
  size = tuple(config.data.gta5_size) if t.inference_size == 'stored' else None
  fn = jax.jit(method.translate, out_shardings=parallel.batch_sharding(mesh))
  params = parallel.replicate(params, mesh)
  tmp = files.temp_dir_beside(out_dir)  # this writer's own: two runs onto one folder do not mix
  for sub in ('images', 'labels'):
    os.makedirs(os.path.join(tmp, sub))
  if samples_dir:
    os.makedirs(samples_dir, exist_ok=True)
  num_samples = int(t.num_sample_images) if samples_dir else 0
  with concurrent.futures.ThreadPoolExecutor(NUM_THREADS) as pool, \
      tqdm(total=len(examples), desc='translate', unit='img', dynamic_ncols=True) as bar:
    for start in range(0, len(examples), batch_size):
      chunk = examples[start:start + batch_size]
      read = list(pool.map(_read, [ex.image_path for ex in chunk], [size] * len(chunk)))
      translated = translate_batch(fn, params, [im for im, _ in read], batch_size, mesh)
      names = [os.path.basename(ex.image_path) for ex in chunk]
      writes = [pool.submit(_write, im, raw, os.path.join(tmp, 'images', n), ex.label_path,
                            os.path.join(tmp, 'labels', os.path.basename(ex.label_path)))
                for im, (_, raw), n, ex in zip(translated, read, names, chunk)]
      for w in writes:
        w.result()  # re-raises a failed write
      for i in range(max(0, min(num_samples - start, len(chunk)))):  # original | translated, as written
        with Image.open(chunk[i].image_path) as a, Image.open(os.path.join(tmp, 'images', names[i])) as b:
          strip = np.concatenate([np.asarray(a.convert('RGB')), np.asarray(b.convert('RGB'))], axis=1)
        Image.fromarray(strip).save(os.path.join(samples_dir, f'{start + i:02d}.png'))
      bar.update(len(chunk))
  info = {**(about or {}), 'raw_dir': os.path.abspath(raw_dir), 'num_images': len(examples),
          'inference_size': t.inference_size, 'stored_size': list(config.data.gta5_size),
          'generator': {k: t[k] for k in ('ngf', 'num_blocks', 'upsample')}, 'output_dir': out_dir}
  files.write_json(os.path.join(tmp, INFO_FILE), info)
  data_lib.replace_folder(tmp, out_dir)
  return info


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """--mode=translate: the translated source folder of the translator run in `workdir` (one process)."""
  if jax.process_count() > 1:
    raise errors.ConfigError('--mode=translate runs as one process (it writes one folder); launch it without '
                             'JAX_NUM_PROCESSES.')
  method, params, step = load_translator(config, workdir)
  mesh = parallel.make_mesh(config.num_devices)
  out_dir = output_dir(config, workdir)
  info = write_translated(method, params, config, out_dir, mesh, os.path.join(workdir, SAMPLES_DIR),
                          about={'translator': os.path.abspath(workdir), 'step': step})
  parallel.say(f"Translated {info['num_images']} source images (translator {workdir}, step {step}) into {out_dir}. "
               f'Train on them with --config.data.gta5_dir={out_dir}')
  return info
