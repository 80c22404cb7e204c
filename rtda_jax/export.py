"""`--mode=export`: a run's eval forward pass as a self-contained serialised program, for deployment.

The exported function is evaluation's (`evaluate.predict_probs`, with `eval.flip` / `eval.scales` TTA and the
run's upsampling): images float32 [B, H, W, 3], RGB in 0..255 (the normalisation is inside) -> softmax probabilities
float32 [B, H, W, K] (`export.output='softmax'`) or train ids int32 [B, H, W] ('argmax'). The batch dimension B is
symbolic, H and W fixed (`export.input_size`), the weights are embedded as constants. Written to
`<workdir>/export/`:
- `model.stablehlo` (`export.format='stablehlo'`): the bytes of `jax.export.Exported.serialize()`, lowered for
  `export.platforms`; `load(dir)` (or `jax.export.deserialize(...).call`) runs it, no model code needed.
- `model.onnx` (`export.format='onnx'`): converted by jax2onnx (optional), runs in onnxruntime. Two of jax2onnx's
  flax/jax rewrites do not fit this model, so the trace gives them the plain JAX functions (`_onnx_compatible`).
- `model.json`: format, input shape / dtype / layout / value range / normalisation, output, classes and their
  Cityscapes label ids, the checkpoint, versions.
"""

from __future__ import annotations

import contextlib
import json
import logging as py_logging
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rtda_jax import errors, files
from rtda_jax import labels as labels_lib

FORMATS = ('stablehlo', 'onnx')
OUTPUTS = ('softmax', 'argmax')
FILES = {'stablehlo': 'model.stablehlo', 'onnx': 'model.onnx'}
ONNX_INSTALL = ('python3 -m pip install onnx onnxruntime && python3 -m pip install --no-deps jax2onnx onnx-ir '
                '(--no-deps: jax2onnx pins orbax-checkpoint<0.11.37, older than this project needs; it runs without '
                'its other dependencies, which serve other frameworks)')
# How each model normalises its 0..255 RGB input inside the exported program (recorded in model.json).
NORMALISATION = {
    'bisenet': 'inside: (x - 255 * (0.485, 0.456, 0.406)) / (255 * (0.229, 0.224, 0.225)), ImageNet mean / std',
    'deeplabv2': 'inside: RGB -> BGR, minus the Caffe mean (104.01, 116.67, 122.68)',
}


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise errors.ConfigError(f'config.export.{field}={value!r}: choose one of {choices}.')


def forward_fn(method: Any, variables: Any, image_size: tuple[int, int], output: str = 'softmax',
               scales: tuple[float, ...] = (1.0,), flip: bool = False,
               align_corners: bool | None = None) -> Callable[[jax.Array], jax.Array]:
  """images float32 [B, H, W, 3] 0..255 -> probabilities float32 [B, H, W, K] or train ids int32 [B, H, W]:
  evaluation's forward pass with `variables` closed over (so an export embeds them as constants)."""
  from rtda_jax import evaluate  # pylint: disable=import-outside-toplevel
  _check_choice('output', output, OUTPUTS)

  def forward(images: jax.Array) -> jax.Array:
    probs = evaluate.predict_probs(method, variables, images, tuple(image_size), scales=scales, flip=flip,
                                   align_corners=align_corners)
    return probs if output == 'softmax' else jnp.argmax(probs, axis=-1).astype(jnp.int32)

  return forward


def input_spec(image_size: tuple[int, int]) -> jax.ShapeDtypeStruct:
  """float32 [batch, H, W, 3] with a symbolic batch."""
  batch, = jax.export.symbolic_shape('batch')
  return jax.ShapeDtypeStruct((batch, *image_size, 3), jnp.float32)


def export_stablehlo(fn: Callable[[jax.Array], jax.Array], image_size: tuple[int, int],
                     platforms: tuple[str, ...] | None = None) -> jax.export.Exported:
  """`fn` exported with a symbolic batch (jax.export), lowered for `platforms` (None = this backend)."""
  return jax.export.export(jax.jit(fn), platforms=tuple(platforms) if platforms else None)(input_spec(image_size))


def load_stablehlo(path: str) -> Callable[[Any], jax.Array]:
  """The function of a serialised export (`model.stablehlo`): images [B, H, W, 3] float32 -> its output."""
  with open(path, 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return jax.jit(exported.call)


# ---- ONNX -----------------------------------------------------------------------------------------------------------

def _require_onnx() -> Any:
  try:
    import jax2onnx  # pylint: disable=import-outside-toplevel
    import onnx  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise errors.UserError(f'export.format=onnx needs the optional packages jax2onnx and onnx ({e}): '
                           f'{ONNX_INSTALL}.') from None
  return jax2onnx


def max_pool_by_slices(x: jax.Array, window_shape: tuple[int, int], strides: tuple[int, int] | None = None,
                       padding: Any = 'VALID') -> jax.Array:
  """flax.linen.max_pool for NHWC with explicit [(lo, hi), (lo, hi)] padding, as the max of the window's strided
  slices of the -inf-padded input (exact: max is exact). For ONNX: jax2onnx lowers lax.reduce_window_max over
  all four NHWC dims to a 4-D MaxPool, which onnxruntime rejects ('Unsupported pooling size')."""
  strides = tuple(strides or (1,) * len(window_shape))
  if isinstance(padding, str):
    if padding != 'VALID':
      raise NotImplementedError(f'max_pool_by_slices: padding {padding!r}')
    padding = ((0, 0),) * len(window_shape)
  xp = jnp.pad(x, ((0, 0), *[tuple(p) for p in padding], (0, 0)), constant_values=-jnp.inf)  # [B, H+, W+, C]
  (kh, kw), (sh, sw) = window_shape, strides
  oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      view = xp[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]  # [B, oh, ow, C]
      out = view if out is None else jnp.maximum(out, view)
  return out


_PLAIN_RESIZE = jax.image.resize  # the function, before any converter rewrites it


@contextlib.contextmanager
def _onnx_compatible() -> Iterator[None]:
  """Inside jax2onnx's trace: flax.linen.max_pool as `max_pool_by_slices` (jax2onnx 0.17's own rewrite of it takes
  `window_shape` by keyword only, TypeError on flax's positional call, and knows no explicit padding:
  NotImplementedError), and jax.image.resize as JAX's own (jax2onnx's rewrite needs a constant batch: 'Symbolic
  dimension used in a context that requires a constant')."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import flax.linen.pooling as pooling  # pylint: disable=import-outside-toplevel
  saved = (nn.max_pool, pooling.max_pool, jax.image.resize)
  nn.max_pool = pooling.max_pool = max_pool_by_slices
  jax.image.resize = _PLAIN_RESIZE
  try:
    yield
  finally:
    nn.max_pool, pooling.max_pool, jax.image.resize = saved


def export_onnx(fn: Callable[[jax.Array], jax.Array], image_size: tuple[int, int], output: str) -> Any:
  """`fn` converted to an onnx.ModelProto (weights as initializers, batch symbolic) by jax2onnx."""
  jax2onnx = _require_onnx()

  def traced(images):
    with _onnx_compatible():
      return fn(images)

  quiet = [py_logging.getLogger(n) for n in ('jax2onnx', 'onnx_ir')]
  levels = [q.level for q in quiet]
  for q in quiet:  # it logs every optional plugin it cannot import (equinox, dm_pix) as a warning
    q.setLevel(py_logging.ERROR)
  try:
    return jax2onnx.to_onnx(traced, [('batch', *image_size, 3)], model_name='rtda_jax',
                            input_names=['images'], output_names=['probs' if output == 'softmax' else 'labels'])
  finally:
    for q, level in zip(quiet, levels):
      q.setLevel(level)


def load_onnx(path: str, num_threads: int = 0) -> Callable[[Any], np.ndarray]:
  """The function of `model.onnx` in onnxruntime on the CPU: images [B, H, W, 3] float32 -> its output."""
  try:
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise errors.UserError(f'Running an ONNX export needs onnxruntime: {ONNX_INSTALL}.') from None
  options = ort.SessionOptions()
  if num_threads:
    options.intra_op_num_threads = num_threads
  session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
  name = session.get_inputs()[0].name
  return lambda images: session.run(None, {name: np.asarray(images, np.float32)})[0]


def load(export_dir: str) -> Callable[[Any], Any]:
  """The exported forward pass in `export_dir` (model.json says which format), ready to call on images
  float32 [B, H, W, 3] 0..255 RGB."""
  meta_path = os.path.join(export_dir, 'model.json')
  if not os.path.exists(meta_path):
    raise errors.MissingFileError(f'No export in {export_dir} (model.json missing): run --mode=export first.')
  with open(meta_path) as f:
    meta = json.load(f)
  path = os.path.join(export_dir, meta['file'])
  return load_stablehlo(path) if meta['format'] == 'stablehlo' else load_onnx(path)


# ---- the mode -------------------------------------------------------------------------------------------------------

def metadata(config: ml_collections.ConfigDict, fmt: str, output: str, image_size: tuple[int, int],
             info: dict[str, Any], platforms: tuple[str, ...] | None, scales, flip) -> dict[str, Any]:
  """model.json: what the exported program takes and gives, and where it comes from."""
  import flax  # pylint: disable=import-outside-toplevel
  num_classes = int(config.model.num_classes)
  out = ({'name': 'probs', 'shape': ['batch', *image_size, num_classes], 'dtype': 'float32',
          'meaning': 'softmax probabilities over the train ids'} if output == 'softmax' else
         {'name': 'labels', 'shape': ['batch', *image_size], 'dtype': 'int32', 'meaning': 'train ids (argmax)'})
  meta = {'format': fmt, 'file': FILES[fmt],
          'input': {'name': 'images', 'shape': ['batch', *image_size, 3], 'dtype': 'float32', 'layout': 'NHWC',
                    'range': 'RGB 0..255', 'normalisation': NORMALISATION.get(config.model.name, 'inside the model')},
          'output': out, 'tta': {'scales': list(scales), 'flip': bool(flip)},
          'model': {k: config.model.get(k) for k in ('name', 'num_classes', 'multi_level', 'bn_mode', 'align_corners',
                                                     'dtype')},
          'checkpoint': {k: info[k] for k in ('workdir', 'kind', 'step')},
          'versions': {'jax': jax.__version__, 'flax': flax.__version__}}
  if num_classes == labels_lib.NUM_CLASSES:
    meta['class_names'] = list(labels_lib.CLASS_NAMES)
    meta['train_id_to_label_id'] = labels_lib.TRAIN_ID_TO_LABEL_ID.tolist()
  if fmt == 'stablehlo':
    meta['platforms'] = list(platforms or (jax.default_backend(),))
    meta['load'] = 'jax.export.deserialize(open(file, "rb").read()).call(images), or rtda_jax.export.load(dir)'
  else:
    import onnx  # pylint: disable=import-outside-toplevel
    meta['versions']['onnx'] = onnx.__version__
    meta['load'] = 'onnxruntime.InferenceSession(file).run(None, {"images": images}), or rtda_jax.export.load(dir)'
  return meta


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """--mode=export: writes `<workdir>/export/model.{stablehlo,onnx}` and `model.json`; returns model.json's dict."""
  from rtda_jax import evaluate, predict  # pylint: disable=import-outside-toplevel
  e = config.export
  fmt, output = str(e.format), str(e.output)
  _check_choice('format', fmt, FORMATS)
  _check_choice('output', output, OUTPUTS)  # also forward_fn's check, before the model loads
  if fmt == 'onnx':
    _require_onnx()  # the clear message before the model loads
  method, variables, info, cfg = predict.load_run_model(config, workdir, e.checkpoint)
  image_size = tuple(int(s) for s in (tuple(e.input_size) or cfg.data[f'{cfg.data.target}_size']))
  if len(image_size) != 2 or min(image_size) <= 0:
    raise errors.ConfigError(f'config.export.input_size={tuple(e.input_size)} must be [H, W] with positive sizes.')
  scales, flip = tuple(cfg.eval.scales), bool(cfg.eval.flip)
  fn = forward_fn(method, variables, image_size, output, scales, flip, evaluate.get_protocol(cfg).align_corners)
  out_dir = os.path.join(workdir, 'export')
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, FILES[fmt])
  platforms = tuple(e.platforms) or None
  if fmt == 'stablehlo':
    data = export_stablehlo(fn, image_size, platforms).serialize()
  else:
    data = export_onnx(fn, image_size, output).SerializeToString()
  files.write_atomic(path, data)
  meta = metadata(cfg, fmt, output, image_size, info, platforms, scales, flip)
  meta['bytes'] = len(data)
  files.write_json(os.path.join(out_dir, 'model.json'), meta)
  print(f'exported {info["workdir"]} ({info["kind"]} checkpoint, step {info["step"]}) as {fmt} '
        f'({output}, input [batch, {image_size[0]}, {image_size[1]}, 3] float32 0..255 RGB) to {path} '
        f'({len(data) / 1e6:.1f} MB)')
  return meta
