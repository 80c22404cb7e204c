"""`--mode=predict`: a trained run's model on one's own images, a folder of them, or a video.

For each image it writes, at the image's own size, under `predict.output` (default `<workdir>/predict`):
  color/<rel>/<core>_color.png        the prediction in the Cityscapes palette
  overlay/<rel>/<core>_overlay.png    that colour mask blended onto the image (`predict.alpha`)
  trainIds/<rel>/<core>_trainIds.png  train ids 0..18 (8-bit grey)
  labelIds/<rel>/<core>_labelIds.png  Cityscapes label ids (7 = road, ..., 33 = bicycle): what the Cityscapes test
                                      server takes; zip `labelIds/` and upload it
`<rel>` is the image's folder relative to the input folder, `<core>` is `<city>_<seq>_<frame>` for a Cityscapes
file `<city>_<seq>_<frame>_leftImg8bit.png` and the file's stem otherwise. The server (cityscapesscripts'
evalPixelLevelSemanticLabeling) matches `<city>_<seq>_<frame>*.png` anywhere under the results folder and wants
exactly one match, hence one folder per kind. A video gives `<stem>_overlay.mp4` (and `<stem>_color.mp4`) through
imageio-ffmpeg, an optional dependency (its wheel carries its own ffmpeg binary and streams frames in and out).

Sizes: `predict.resize='pad'` feeds each image at full resolution, padded (zeros, bottom and right) to a multiple of
`predict.pad_multiple` (BiSeNet's 32x downsampling) and cropped back; 'resize' feeds it at `predict.size` (default:
the size the run was evaluated at) and upsamples the logits back to the image's size, as evaluation upsamples them
to the label size. Test-time augmentation is evaluation's (`eval.flip`, `eval.scales`, `evaluate.predict_probs`).
Images of one size are batched (`predict.batch_size`; a last short batch is padded), one compiled program per
size; inputs are read one at a time from a generator, so a folder or a video never sits in memory.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import time
import warnings
from collections import OrderedDict
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from rtda_jax import errors, files
from rtda_jax import labels as labels_lib

KINDS = ('color', 'overlay', 'trainIds', 'labelIds')
VIDEO_KINDS = ('color', 'overlay')  # a video gives MP4s of these; label maps need a lossless format: predict frames
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg')
RESIZE_MODES = ('pad', 'resize')
# The model fields a checkpoint's variables depend on (or whose forward pass they change); read from the run.
RUN_MODEL_FIELDS = ('name', 'num_classes', 'output_classes', 'multi_level', 'bn_mode', 'align_corners')
_CITYSCAPES_NAME = re.compile(r'^([^_]+)_(\d+)_(\d+)_leftImg8bit$')
VIDEO_INSTALL = 'python3 -m pip install imageio-ffmpeg'


# ---- the run's model ------------------------------------------------------------------------------------------------

def with_run_model(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` whose model fields (RUN_MODEL_FIELDS) are those of `<workdir>/config.json`
  where it exists: the architecture, and the upsampling that no parameter shape reveals, are the run's."""
  cfg = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return cfg
  with open(path) as f:
    run_model = json.load(f).get('model', {})
  for field in RUN_MODEL_FIELDS:
    if field in run_model and run_model[field] != cfg.model.get(field):
      print(f'model.{field} = {run_model[field]!r} from {path} (the config says {cfg.model.get(field)!r})')
      cfg.model[field] = run_model[field]
  return cfg


def load_run_model(config: ml_collections.ConfigDict, workdir: str, checkpoint: Any = 'best'
                   ) -> tuple[Any, dict[str, Any], dict[str, Any], ml_collections.ConfigDict]:
  """(method, segmentation variables on the default device, {'workdir', 'kind', 'step', 'path'}, config with the
  run's model) of the checkpoint `checkpoint` ('best' | 'last' | a step) of `workdir`. 'best' falls back to 'last'
  (with a warning) for a run that never evaluated. Errors name the checkpoint and what to do."""
  from rtda_jax import checkpointing, methods, models  # pylint: disable=import-outside-toplevel
  checkpoint = str(checkpoint if checkpoint is not None else 'best')
  if checkpoint not in ('best', 'last') and not checkpoint.isdigit():
    raise errors.ConfigError(f"checkpoint={checkpoint!r}: choose 'best', 'last' or a step number.")
  steps = {kind: checkpointing.checkpoint_steps(os.path.join(workdir, 'checkpoints', kind))
           for kind in ('best', 'last')}
  if checkpoint == 'best' and not steps['best'] and steps['last']:
    print(f'{workdir} has no best checkpoint (it never evaluated); using the last one.')
    checkpoint = 'last'
  if checkpoint.isdigit():  # a step may be kept in last/ or in best/
    kind = 'last' if int(checkpoint) in steps['last'] else 'best' if steps['best'][-1:] == [int(checkpoint)] else None
    if kind is None:
      raise errors.MissingFileError(
          f'{workdir} has no checkpoint of step {checkpoint} (last/: {steps["last"]}, best/: {steps["best"]}); '
          'pass --config.<predict|export>.checkpoint=best|last|STEP of one of them.')
    spec = f'{workdir}:best' if kind == 'best' else f'{workdir}:{checkpoint}'  # best/ keeps one: that step
  elif not steps[checkpoint]:
    raise errors.MissingFileError(f'No checkpoint in {os.path.join(workdir, "checkpoints", checkpoint)}: pass '
                                  '--workdir of a trained run (and --config.<predict|export>.checkpoint='
                                  'best|last|STEP).')
  else:
    spec = f'{workdir}:{checkpoint}'
  cfg = with_run_model(config, workdir)
  variables, info = checkpointing.load_segmentation_variables(spec)
  method = methods.get_method(cfg)
  expected = models.init_shapes(method.model, (1, 64, 64, 3), train=False)
  checkpointing.check_same_structure(variables, dict(expected), f'the checkpoint {info["path"]}')
  return method, jax.device_put(variables), info, cfg


# ---- inputs ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Item:
  """One input image: where its outputs go (`rel` folder, `core` name) and its pixels [H, W, 3] uint8."""
  rel: str
  core: str
  image: np.ndarray


def output_core(filename: str) -> str:
  """`<city>_<seq>_<frame>` for a Cityscapes image `<city>_<seq>_<frame>_leftImg8bit.png`, else the file's stem."""
  stem = os.path.splitext(os.path.basename(filename))[0]
  m = _CITYSCAPES_NAME.match(stem)
  return f'{m.group(1)}_{m.group(2)}_{m.group(3)}' if m else stem


def read_image(path: str) -> np.ndarray:
  """[H, W, 3] uint8 RGB of an image file of any format Pillow reads (grey, palette, RGBA, 16-bit converted)."""
  with Image.open(path) as im:
    im.load()
    if im.mode in ('I;16', 'I;16B', 'I;16L', 'I'):  # 16/32-bit grey: scale to 8 bits before the RGB conversion
      arr = np.asarray(im).astype(np.float64)
      top = 65535.0 if arr.max(initial=0) > 255 else 255.0
      im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    image = np.asarray(im.convert('RGB'))
  if image.ndim != 3 or min(image.shape[:2]) < 1:
    raise ValueError(f'empty image {image.shape}')
  return image


def list_files(folder: str, exclude: str | None = None) -> list[str]:
  """Every file under `folder` (recursively, sorted, hidden files and folders left out), except under `exclude`."""
  exclude = os.path.realpath(exclude) if exclude else None
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.')
                     and (exclude is None or os.path.realpath(os.path.join(root, d)) != exclude))
    found.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith('.'))
  return found


def iter_images(paths: list[str], root: str | None, skipped: list[tuple[str, str]],
                warn: Callable[[str], Any] = print) -> Iterator[Item]:
  """Items of the readable images among `paths`, one file read at a time; each unreadable or odd file gets a
  warning naming it (`warn`) and is appended to `skipped` as (path, reason)."""
  for path in paths:
    try:
      image = read_image(path)
    except Exception as e:  # pylint: disable=broad-except  # any file Pillow cannot read: skip it, say which
      reason = f'{type(e).__name__}: {e}'.splitlines()[0][:200]
      warn(f'warning: skipped {path} ({reason})')
      skipped.append((path, reason))
      continue
    rel = os.path.relpath(os.path.dirname(path), root) if root else ''
    yield Item('' if rel == '.' else rel, output_core(path), image)


def is_video(path: str) -> bool:
  return os.path.isfile(path) and path.lower().endswith(VIDEO_EXTENSIONS)


@contextlib.contextmanager
def _quiet_fork() -> Iterator[None]:
  """Silences JAX's 'os.fork() was called' warning around starting ffmpeg: subprocess forks and execs at once in C
  (no Python runs in the child), the case that warning does not concern."""
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message=r'os\.fork\(\) was called', category=RuntimeWarning)
    yield


def _imageio_ffmpeg():
  try:
    import imageio_ffmpeg  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise errors.UserError(f'Predicting on a video needs the optional package imageio-ffmpeg (it brings its own '
                           f'ffmpeg): {VIDEO_INSTALL}. Or extract the frames to a folder of images and pass that '
                           f'folder as --config.predict.input.') from None
  return imageio_ffmpeg


def iter_video(path: str) -> tuple[dict[str, Any], Iterator[np.ndarray]]:
  """(metadata {'size': (W, H), 'fps', 'duration', ...}, a generator of [H, W, 3] uint8 frames) of a video file,
  decoded by ffmpeg one frame at a time."""
  reader = _imageio_ffmpeg().read_frames(path)
  try:
    with _quiet_fork():
      meta = next(reader)
  except Exception as e:  # pylint: disable=broad-except  # ffmpeg's own message names what is wrong
    raise errors.DataError(f'Cannot read the video {path}: {str(e).splitlines()[-1] if str(e) else e}') from None
  w, h = meta['size']

  def frames() -> Iterator[np.ndarray]:
    try:
      for data in reader:
        yield np.frombuffer(data, np.uint8).reshape(h, w, 3)
    finally:
      reader.close()

  return meta, frames()


# ---- the model on batches -------------------------------------------------------------------------------------------

class Predictor:
  """Train-id maps [N, H, W] uint8 of equally sized uint8 images [N, H, W, 3], in fixed-shape batches, one
  compiled program per image size."""

  def __init__(self, method: Any, variables: Any, *, resize: str = 'pad', size: tuple[int, int] = (512, 1024),
               pad_multiple: int = 32, batch_size: int = 4, scales: tuple[float, ...] = (1.0,), flip: bool = False,
               align_corners: bool | None = None, resample: str = 'bilinear'):
    if resize not in RESIZE_MODES:
      raise errors.ConfigError(f'config.predict.resize={resize!r}: choose one of {RESIZE_MODES}.')
    if batch_size < 1 or pad_multiple < 1:
      raise errors.ConfigError(f'config.predict.batch_size={batch_size} and pad_multiple={pad_multiple} must be >= 1.')
    self.method, self.variables = method, variables
    self.resize, self.size, self.pad_multiple = resize, tuple(int(s) for s in size), int(pad_multiple)
    self.batch_size, self.scales, self.flip = int(batch_size), tuple(scales), bool(flip)
    self.align_corners, self.resample = align_corners, resample
    self._compiled: dict[tuple[int, int], Callable[..., jax.Array]] = {}

  def network_shape(self, hw: tuple[int, int]) -> tuple[int, int]:
    """[H, W] the network sees for an image of [H, W] `hw`."""
    if self.resize == 'resize':
      return self.size
    m = self.pad_multiple
    return (-(-hw[0] // m) * m, -(-hw[1] // m) * m)

  def _program(self, hw: tuple[int, int]) -> Callable[..., jax.Array]:
    if hw not in self._compiled:
      from rtda_jax import evaluate  # pylint: disable=import-outside-toplevel
      net = self.network_shape(hw)
      out_shape = net if self.resize == 'pad' else hw

      def forward(variables, images):  # images [B, *net, 3] uint8 -> [B, *hw] uint8
        probs = evaluate.predict_probs(self.method, variables, images, out_shape, scales=self.scales,
                                       flip=self.flip, align_corners=self.align_corners)
        return jnp.argmax(probs[:, :hw[0], :hw[1]], axis=-1).astype(jnp.uint8)

      self._compiled[hw] = jax.jit(forward)
    return self._compiled[hw]

  def network_input(self, image: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 -> the network's [H', W', 3] uint8: zero-padded bottom/right, or resized (PIL)."""
    hw = image.shape[:2]
    net = self.network_shape(hw)
    if self.resize == 'resize':
      if hw == net:
        return image
      from rtda_jax.data import pipeline  # pylint: disable=import-outside-toplevel
      return np.asarray(Image.fromarray(image).resize(net[::-1], pipeline.EVAL_RESAMPLE[self.resample]))
    out = np.zeros((*net, 3), np.uint8)
    out[:hw[0], :hw[1]] = image
    return out

  def __call__(self, images: list[np.ndarray]) -> np.ndarray:
    """[N, H, W] uint8 train ids of N <= batch_size images of one size [H, W, 3] uint8."""
    hw = images[0].shape[:2]
    batch = np.stack([self.network_input(im) for im in images])  # [N, H', W', 3]
    n = len(images)
    if n < self.batch_size:  # one shape per size: a short batch is padded with zeros, its rows dropped
      batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]), np.uint8)])
    return np.asarray(self._program(hw)(self.variables, batch))[:n]


def predictor_from_config(method: Any, variables: Any, config: ml_collections.ConfigDict) -> Predictor:
  """The Predictor `config.predict` and evaluation's TTA and upsampling (`config.eval`) describe."""
  from rtda_jax import evaluate  # pylint: disable=import-outside-toplevel
  p = config.predict
  protocol = evaluate.get_protocol(config)
  size = tuple(p.size) or tuple(config.data[f'{config.data.target}_size'])
  return Predictor(method, variables, resize=p.resize, size=size, pad_multiple=p.pad_multiple,
                   batch_size=p.batch_size, scales=tuple(config.eval.scales), flip=bool(config.eval.flip),
                   align_corners=protocol.align_corners, resample=protocol.image_resample)


def batched(predictor: Predictor, items: Iterator[Item], max_pending: int | None = None
            ) -> Iterator[tuple[Item, np.ndarray]]:
  """(item, train ids [H, W] uint8) for every item: items are grouped by size into batches; at most `max_pending`
  (default 4 batches) wait at a time (then the oldest group goes, short), so memory stays bounded."""
  max_pending = max_pending or 4 * predictor.batch_size
  groups: OrderedDict[tuple[int, int], list[Item]] = OrderedDict()
  pending = 0

  def flush(hw):
    nonlocal pending
    group = groups.pop(hw)
    pending -= len(group)
    preds = predictor([it.image for it in group])
    yield from zip(group, preds)

  for item in items:
    hw = item.image.shape[:2]
    groups.setdefault(hw, []).append(item)
    pending += 1
    if len(groups[hw]) == predictor.batch_size:
      yield from flush(hw)
    elif pending >= max_pending:
      yield from flush(next(iter(groups)))
  while groups:
    yield from flush(next(iter(groups)))


# ---- outputs --------------------------------------------------------------------------------------------------------

def overlay(image: np.ndarray, train_ids: np.ndarray, alpha: float) -> np.ndarray:
  """[H, W, 3] uint8: (1 - alpha) image + alpha colour mask, rounded."""
  blend = (1.0 - alpha) * image.astype(np.float32) + alpha * labels_lib.colorize(train_ids).astype(np.float32)
  return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def label_ids(train_ids: np.ndarray) -> np.ndarray:
  """[H, W] train ids -> Cityscapes label ids (uint8); an id outside 0..18 becomes 0 ('unlabeled')."""
  table = np.zeros(256, np.uint8)
  table[:labels_lib.NUM_CLASSES] = labels_lib.TRAIN_ID_TO_LABEL_ID
  return table[train_ids]


def output_path(output: str, kind: str, item: Item) -> str:
  return os.path.join(output, kind, item.rel, f'{item.core}_{kind}.png')


def write_outputs(output: str, item: Item, train_ids: np.ndarray, kinds: tuple[str, ...], alpha: float) -> None:
  """The PNGs of `kinds` for one image, each at the image's size."""
  maps = {'color': lambda: labels_lib.colorize(train_ids), 'overlay': lambda: overlay(item.image, train_ids, alpha),
          'trainIds': lambda: train_ids, 'labelIds': lambda: label_ids(train_ids)}
  for kind in kinds:
    path = output_path(output, kind, item)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(maps[kind]()).save(path)


def _kinds(spec: Any) -> tuple[str, ...]:
  kinds = tuple(k.strip() for k in (spec.split(',') if isinstance(spec, str) else spec) if k.strip())
  unknown = [k for k in kinds if k not in KINDS]
  if unknown or not kinds:
    raise errors.ConfigError(f'config.predict.write={spec!r}: a comma-separated subset of {",".join(KINDS)}.')
  return kinds


def _progress(total: int | None, desc: str):
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True, disable=jax.process_index() != 0)


def predict_images(predictor: Predictor, paths: list[str], root: str | None, output: str, kinds: tuple[str, ...],
                   alpha: float) -> dict[str, Any]:
  """Predicts and writes every readable image of `paths` (relative folders kept from `root`)."""
  skipped: list[tuple[str, str]] = []
  count = 0
  with _progress(len(paths), 'predict') as bar:
    for item, train_ids in batched(predictor, iter_images(paths, root, skipped, bar.write)):
      write_outputs(output, item, train_ids, kinds, alpha)
      count += 1
      bar.update(1)
    bar.update(len(skipped))
  return {'num_images': count, 'skipped': [{'path': p, 'reason': r} for p, r in skipped]}


def predict_video(predictor: Predictor, path: str, output: str, kinds: tuple[str, ...], alpha: float,
                  fps: float = 0.0) -> dict[str, Any]:
  """Writes `<stem>_overlay.mp4` / `<stem>_color.mp4` (H.264) of a video, frame by frame, in order."""
  ffmpeg = _imageio_ffmpeg()
  meta, frames = iter_video(path)
  w, h = meta['size']
  fps = float(fps or meta.get('fps') or 25.0)
  stem = os.path.splitext(os.path.basename(path))[0]
  kinds = tuple(k for k in kinds if k in VIDEO_KINDS) or ('overlay',)
  os.makedirs(output, exist_ok=True)
  writers, written = {}, {}
  # H.264 in yuv420p needs even sizes: an odd side gets one more pixel (edge copy) here, never a rescale.
  even = (h + h % 2, w + w % 2)
  for kind in kinds:
    written[kind] = os.path.join(output, f'{stem}_{kind}.mp4')
    writers[kind] = ffmpeg.write_frames(written[kind], even[::-1], fps=fps, macro_block_size=1, quality=8,
                                        ffmpeg_log_level='error')
    with _quiet_fork():
      writers[kind].send(None)
  total = int(round(meta['duration'] * fps)) if meta.get('duration') else None
  count = 0
  items = (Item('', f'{stem}_{i:06d}', frame) for i, frame in enumerate(frames))
  try:
    with _progress(total, 'predict video') as bar:
      for item, train_ids in batched(predictor, items, max_pending=predictor.batch_size):  # one size: in order
        for kind in kinds:
          frame = overlay(item.image, train_ids, alpha) if kind == 'overlay' else labels_lib.colorize(train_ids)
          if frame.shape[:2] != even:
            frame = np.pad(frame, ((0, even[0] - h), (0, even[1] - w), (0, 0)), mode='edge')
          writers[kind].send(np.ascontiguousarray(frame))
        count += 1
        bar.update(1)
  finally:
    for writer in writers.values():
      writer.close()
  return {'num_images': count, 'skipped': [], 'videos': written, 'fps': fps}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """--mode=predict: the run's model (`predict.checkpoint`) on `predict.input` (an image, a folder, a video);
  writes the outputs and `predict.json` (what was read, skipped and written) into `predict.output`."""
  p = config.predict
  source = str(p.input or '')
  if not source:
    raise errors.ConfigError('config.predict.input is empty: name an image, a folder of images or a video, e.g. '
                             '--config.predict.input=path/to/leftImg8bit/test.')
  if not os.path.exists(source):
    raise errors.MissingFileError(f'config.predict.input={source!r} does not exist.')
  kinds = _kinds(p.write)
  alpha = float(p.alpha)
  if not 0.0 <= alpha <= 1.0:
    raise errors.ConfigError(f'config.predict.alpha={alpha} must be in [0, 1].')
  video = is_video(source)
  if video:
    _imageio_ffmpeg()  # the clear message before the model loads
  output = str(p.output or os.path.join(workdir, 'predict'))
  method, variables, info, cfg = load_run_model(config, workdir, p.checkpoint)
  predictor = predictor_from_config(method, variables, cfg)
  print(f'predict: {info["workdir"]} ({info["kind"]} checkpoint, step {info["step"]}) on {source} -> {output} '
        f'({p.resize}{" to %dx%d" % predictor.size if p.resize == "resize" else ""})')
  start = time.perf_counter()
  if video:
    result = predict_video(predictor, source, output, kinds, alpha, float(p.get('fps', 0.0) or 0.0))
  elif os.path.isdir(source):
    result = predict_images(predictor, list_files(source, exclude=output), source, output, kinds, alpha)
  else:
    result = predict_images(predictor, [source], None, output, kinds, alpha)
  seconds = time.perf_counter() - start
  result.update({'input': source, 'output': output, 'checkpoint': {k: info[k] for k in ('workdir', 'kind', 'step')},
                 'resize': p.resize, 'network_size': list(predictor.size) if p.resize == 'resize' else None,
                 'pad_multiple': predictor.pad_multiple if p.resize == 'pad' else None,
                 'tta': {'scales': list(predictor.scales), 'flip': predictor.flip},
                 'written': [k for k in kinds if not video or k in VIDEO_KINDS], 'seconds': seconds,
                 'images_per_s': result['num_images'] / seconds if seconds > 0 else None})
  os.makedirs(output, exist_ok=True)
  files.write_json(os.path.join(output, 'predict.json'), result)
  skipped = result['skipped']
  print(f'predicted {result["num_images"]} {"frames" if video else "images"} in {seconds:.1f} s '
        f'({result["images_per_s"] or 0:.1f}/s) into {output}; skipped {len(skipped)} file(s)'
        + (': ' + ', '.join(s['path'] for s in skipped[:10]) + (' ...' if len(skipped) > 10 else '') if skipped
           else '.'))
  return result
