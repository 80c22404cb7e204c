"""--mode=predict: a folder of mixed sizes with broken and odd files, both resize modes, output names and sizes,
the label-id mapping (against cityscapesscripts' own table), batching that streams, the video path."""

from __future__ import annotations

import fnmatch
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from rtda_jax import app, checkpointing, errors, predict
from tests.trainer_utils import TINY_MODEL, TinySeg, restore_params, tiny_config

CS_IMAGE = 'berlin_000000_000019_leftImg8bit.png'


def make_run(root: str, step: int = 3, best: bool = True) -> tuple[str, object]:
  """A run workdir of a tiny untrained model (TinySeg, supervised): config.json and checkpoints `last` (and `best`)
  of step `step`, written by the project's Checkpointer as training writes them. Returns (workdir, config)."""
  from rtda_jax import methods
  workdir = os.path.join(root, 'run')
  config = tiny_config(os.path.join(root, 'data'), **{'model.name': TINY_MODEL})
  method = methods.get_method(config)
  state = method.init(jax.random.PRNGKey(0), {'source': (16, 16), 'target': (16, 16)})
  # BatchNorm statistics away from (0, 1), so that a forward pass that ignored them would differ.
  rng = np.random.default_rng(0)
  stats = jax.tree.map(lambda x: jnp.asarray(rng.uniform(0.2, 0.8, x.shape), x.dtype), state.seg.batch_stats)
  state = state.replace(seg=state.seg.replace(batch_stats=stats))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  ckpt = checkpointing.Checkpointer(workdir)
  ckpt.save(step, state, {}, {'step': step})
  if best:
    ckpt.save(step, state, {}, {'step': step}, best=True)
  ckpt.close()
  return workdir, config


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  return make_run(str(tmp_path_factory.mktemp('predict_run')))


def model_logits(workdir: str, image: np.ndarray) -> np.ndarray:
  """[H, W, 19] logits of TinySeg on one image, from the raw saved variables (independent of predict.py)."""
  seg = restore_params(workdir)['seg']
  variables = {'params': seg['params'], 'batch_stats': seg['batch_stats']}
  return np.asarray(TinySeg(19).apply(variables, jnp.asarray(image[None], jnp.float32), train=False)['logits'][0])


def assert_model_argmax(train_ids: np.ndarray, logits: np.ndarray) -> None:
  """`train_ids` is the argmax of `logits` wherever the top two logits differ by more than 1e-3. predict.py takes
  the argmax of the float32 softmax, which keeps the logits' order except where rounding (a few ulp, relative
  ~1e-6 of values of order 1-10) can tie or swap them: a margin of 1e-3 is far above that."""
  top2 = np.sort(logits, axis=-1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 1e-3
  assert clear.mean() > 0.95  # nearly every pixel is checked
  np.testing.assert_array_equal(train_ids[clear], np.argmax(logits, axis=-1)[clear])


def write_folder(folder: str) -> dict[str, np.ndarray]:
  """Images of three sizes (one grey, one JPEG, one a Cityscapes name in a city folder), a broken PNG and a text
  file; returns {relative path: the RGB pixels as read}."""
  rng = np.random.default_rng(1)
  images = {
      f'berlin/{CS_IMAGE}': rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
      'berlin/berlin_000001_000002_leftImg8bit.png': rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
      'other/deeper/street.png': rng.integers(0, 256, (40, 70, 3), dtype=np.uint8),
      'grey.png': rng.integers(0, 256, (33, 64), dtype=np.uint8),
      'photo.jpg': rng.integers(0, 256, (50, 30, 3), dtype=np.uint8),
  }
  for rel, pixels in images.items():
    os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
    Image.fromarray(pixels).save(os.path.join(folder, rel))
  images['photo.jpg'] = np.asarray(Image.open(os.path.join(folder, 'photo.jpg')).convert('RGB'))  # as decoded
  images['grey.png'] = np.repeat(images['grey.png'][..., None], 3, axis=-1)
  with open(os.path.join(folder, 'broken.png'), 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + b'not really a png' * 4)
  with open(os.path.join(folder, 'notes.txt'), 'w') as f:
    f.write('not an image')
  return images


def predict_config(config, **overrides):
  cfg = tiny_config(config.data.root, **{'model.name': 'bisenet'})  # the run's config.json says TinySeg
  for key, value in overrides.items():
    cfg.predict[key] = value
  return cfg


def output_name(rel: str, kind: str) -> str:
  folder, name = os.path.split(rel)
  core = name[:-len('_leftImg8bit.png')] if name.endswith('_leftImg8bit.png') else os.path.splitext(name)[0]
  return os.path.join(kind, folder, f'{core}_{kind}.png')


def test_folder_of_mixed_sizes_with_broken_files_pad_mode(run, tmp_path, capsys):
  from cityscapesscripts.helpers import csHelpers, labels as cs_labels
  workdir, config = run
  folder, out = str(tmp_path / 'in'), str(tmp_path / 'out')
  images = write_folder(folder)
  cfg = predict_config(config, input=folder, output=out, batch_size=2, alpha=0.25)
  result = app.run(cfg, workdir=workdir, mode='predict')

  assert result['num_images'] == len(images)
  skipped = sorted(os.path.basename(s['path']) for s in result['skipped'])
  assert skipped == ['broken.png', 'notes.txt']
  printed = capsys.readouterr().out
  assert os.path.join(folder, 'broken.png') in printed and os.path.join(folder, 'notes.txt') in printed
  assert 'skipped 2 file(s)' in printed
  with open(os.path.join(out, 'predict.json')) as f:
    assert len(json.load(f)['skipped']) == 2
  assert result['checkpoint']['kind'] == 'best' and result['checkpoint']['step'] == 3

  train_to_label = {tid: l.id for tid, l in cs_labels.trainId2label.items() if 0 <= tid < 19}
  train_to_color = {tid: l.color for tid, l in cs_labels.trainId2label.items() if 0 <= tid < 19}
  for rel, pixels in images.items():
    h, w = pixels.shape[:2]
    maps = {kind: np.asarray(Image.open(os.path.join(out, output_name(rel, kind))))
            for kind in predict.KINDS}
    for kind, m in maps.items():
      assert m.shape[:2] == (h, w), (rel, kind)
    train_ids = maps['trainIds']
    assert train_ids.dtype == np.uint8 and train_ids.max() < 19
    np.testing.assert_array_equal(maps['labelIds'], np.vectorize(train_to_label.get)(train_ids).astype(np.uint8))
    colors = np.array([train_to_color[t] for t in range(19)], np.uint8)
    np.testing.assert_array_equal(maps['color'], colors[train_ids])
    blend = np.floor(0.75 * pixels.astype(np.float64) + 0.25 * colors[train_ids] + 0.5)
    # The overlay is computed in float32: within one grey level of the float64 blend.
    assert np.abs(maps['overlay'].astype(np.int64) - blend).max() <= 1
    # 'pad': the network sees the image zero-padded (bottom/right) to multiples of 32, cropped back.
    padded = np.zeros((-(-h // 32) * 32, -(-w // 32) * 32, 3), np.uint8)
    padded[:h, :w] = pixels
    assert_model_argmax(train_ids, model_logits(workdir, padded)[:h, :w])

  # The Cityscapes evaluation finds exactly one prediction for a ground-truth file in labelIds/.
  cs = csHelpers.getCsFileInfo('berlin_000000_000019_gtFine_labelIds.png')
  pattern = f'{cs.city}_{cs.sequenceNb}_{cs.frameNb}*.png'
  found = [f for _, _, files in os.walk(os.path.join(out, 'labelIds')) for f in fnmatch.filter(files, pattern)]
  assert found == ['berlin_000000_000019_labelIds.png']


def test_resize_mode_feeds_a_fixed_size_and_writes_at_the_input_size(run, tmp_path):
  workdir, config = run
  folder, out = tmp_path / 'in', str(tmp_path / 'out')
  folder.mkdir()
  rng = np.random.default_rng(2)
  same = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
  other = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
  Image.fromarray(same).save(folder / 'same.png')
  Image.fromarray(other).save(folder / 'other.png')
  cfg = predict_config(config, input=str(folder), output=out, resize='resize', size=(32, 48),
                       write='trainIds,labelIds')
  result = app.run(cfg, workdir=workdir, mode='predict')
  assert result['num_images'] == 2 and result['network_size'] == [32, 48]
  assert sorted(os.listdir(out)) == ['labelIds', 'predict.json', 'trainIds']
  # An image already at the network's size is the model's own argmax; another comes back at its own size.
  assert_model_argmax(np.asarray(Image.open(os.path.join(out, 'trainIds', 'same_trainIds.png'))),
                      model_logits(workdir, same))
  assert np.asarray(Image.open(os.path.join(out, 'trainIds', 'other_trainIds.png'))).shape == (50, 70)
  # The same image under 'pad' gives other labels: the network saw it at another size.
  pad_out = str(tmp_path / 'pad')
  app.run(predict_config(config, input=str(folder / 'other.png'), output=pad_out, write='trainIds'),
          workdir=workdir, mode='predict')
  resized = np.asarray(Image.open(os.path.join(out, 'trainIds', 'other_trainIds.png')))
  padded = np.asarray(Image.open(os.path.join(pad_out, 'trainIds', 'other_trainIds.png')))
  assert resized.shape == padded.shape and not np.array_equal(resized, padded)


class _Recorder:
  """A stand-in Predictor: the 'prediction' of an image is its red channel; records each batch's size."""
  batch_size = 3

  def __init__(self):
    self.calls = []

  def __call__(self, images):
    assert len({im.shape for im in images}) == 1 and len(images) <= self.batch_size
    self.calls.append(len(images))
    return np.stack([im[..., 0] for im in images])


def test_batching_groups_sizes_streams_and_returns_every_image_once():
  rng = np.random.default_rng(3)
  sizes = [(8, 8), (8, 12), (8, 8), (4, 4), (8, 8), (8, 12), (8, 8), (6, 6), (8, 8), (8, 8)]
  items = [predict.Item('', f'im{i}', rng.integers(0, 256, (*hw, 3), dtype=np.uint8)) for i, hw in enumerate(sizes)]
  pulled = []

  def source():
    for item in items:
      pulled.append(item.core)
      yield item

  for max_pending in (4, 100):
    pulled.clear()
    recorder, seen, in_flight = _Recorder(), {}, []
    for item, pred in predict.batched(recorder, source(), max_pending=max_pending):
      in_flight.append(len(pulled) - len(seen))
      seen[item.core] = pred
      np.testing.assert_array_equal(pred, item.image[..., 0])
    assert sorted(seen) == sorted(it.core for it in items)  # each image once, with its own prediction
    assert max(in_flight) <= min(max_pending, len(items))  # never more than max_pending images held
    assert sum(recorder.calls) == len(items)
  # Unbounded, batches fill: six 8x8 images in two full batches, the other sizes one batch each.
  assert recorder.calls == [3, 3, 2, 1, 1]


def test_predictor_pads_a_short_batch_to_one_compiled_shape(run):
  from rtda_jax import methods
  workdir, config = run
  cfg = predict.with_run_model(config, workdir)
  method = methods.get_method(cfg)
  variables, _ = checkpointing.load_segmentation_variables(workdir)
  predictor = predict.Predictor(method, variables, resize='pad', batch_size=4)
  rng = np.random.default_rng(4)
  images = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(3)]
  preds = predictor(images)
  assert preds.shape == (3, 20, 30) and predictor.network_shape((20, 30)) == (32, 32)
  one = predictor(images[:1])
  np.testing.assert_array_equal(one[0], preds[0])  # the zero rows that fill the batch change nothing
  assert list(predictor._compiled) == [(20, 30)]  # pylint: disable=protected-access


def test_checkpoint_choice_and_errors(tmp_path):
  workdir, config = make_run(str(tmp_path), step=5, best=False)
  folder = tmp_path / 'one.png'
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder)
  cfg = predict_config(config, input=str(folder), output=str(tmp_path / 'out'), write='color')
  # A run without a best checkpoint (it never evaluated) falls back to the last one.
  assert app.run(cfg, workdir=workdir, mode='predict')['checkpoint'] == {'workdir': workdir, 'kind': 'last',
                                                                         'step': 5}
  cfg.predict.checkpoint = '7'
  with pytest.raises(errors.MissingFileError, match='no checkpoint of step 7'):
    app.run(cfg, workdir=workdir, mode='predict')
  cfg.predict.checkpoint = 'best'
  cfg.predict.input = str(tmp_path / 'absent')
  with pytest.raises(errors.MissingFileError, match='absent'):
    app.run(cfg, workdir=workdir, mode='predict')
  cfg.predict.input = ''
  with pytest.raises(errors.ConfigError, match='predict.input'):
    app.run(cfg, workdir=workdir, mode='predict')
  cfg.predict.input, cfg.predict.resize = str(folder), 'stretch'
  with pytest.raises(errors.ConfigError, match='predict.resize'):
    app.run(cfg, workdir=workdir, mode='predict')


def test_cityscapes_names_keep_city_sequence_frame():
  assert predict.output_core(f'/x/{CS_IMAGE}') == 'berlin_000000_000019'
  assert predict.output_core('/x/bad-honnef_000001_000020_leftImg8bit.png') == 'bad-honnef_000001_000020'
  assert predict.output_core('/x/street.photo.jpg') == 'street.photo'
  assert predict.output_core('/x/berlin_000000_000019_gtFine_labelIds.png') == 'berlin_000000_000019_gtFine_labelIds'


def test_video_without_imageio_ffmpeg_says_how_to_install(run, tmp_path, monkeypatch):
  workdir, config = run
  video = tmp_path / 'clip.mp4'
  video.write_bytes(b'')
  monkeypatch.setitem(sys.modules, 'imageio_ffmpeg', None)  # import fails as if not installed
  with pytest.raises(errors.UserError, match='pip install imageio-ffmpeg'):
    app.run(predict_config(config, input=str(video), output=str(tmp_path / 'out')), workdir=workdir, mode='predict')


@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')  # the test's own ffmpeg calls (see predict._quiet_fork)
def test_video_gives_mp4s_of_every_frame(run, tmp_path):
  ffmpeg = pytest.importorskip('imageio_ffmpeg')  # optional dependency: this test needs it
  workdir, config = run
  h, w, n = 48, 65, 5  # an odd width: the MP4 gets one more column, never a rescale
  rng = np.random.default_rng(5)
  path = str(tmp_path / 'clip.mp4')
  writer = ffmpeg.write_frames(path, (w + 1, h), fps=10, macro_block_size=1, ffmpeg_log_level='error')
  writer.send(None)
  for _ in range(n):
    writer.send(np.ascontiguousarray(rng.integers(0, 256, (h, w + 1, 3), dtype=np.uint8)))
  writer.close()
  out = str(tmp_path / 'out')
  cfg = predict_config(config, input=path, output=out, batch_size=2)
  result = app.run(cfg, workdir=workdir, mode='predict')
  assert result['num_images'] == n and result['fps'] == pytest.approx(10.0)
  assert sorted(os.listdir(out)) == ['clip_color.mp4', 'clip_overlay.mp4', 'predict.json']
  reader = ffmpeg.read_frames(os.path.join(out, 'clip_overlay.mp4'))
  meta = next(reader)
  frames = list(reader)
  assert meta['size'] == (w + 1, h) and len(frames) == n

  # Odd sizes: a 48x65 video written at 48x65 (yuv444, which allows odd sizes) comes back 48x66.
  odd = str(tmp_path / 'odd.mp4')
  writer = ffmpeg.write_frames(odd, (w, h), fps=10, macro_block_size=1, pix_fmt_out='yuv444p',
                               ffmpeg_log_level='error')
  writer.send(None)
  for _ in range(2):
    writer.send(np.ascontiguousarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
  writer.close()
  result = app.run(predict_config(config, input=odd, output=out, write='overlay'), workdir=workdir, mode='predict')
  reader = ffmpeg.read_frames(os.path.join(out, 'odd_overlay.mp4'))
  assert next(reader)['size'] == (w + 1, h) and len(list(reader)) == 2 == result['num_images']


def test_the_run_model_includes_its_output_classes(tmp_path):
  """A 16-output SYNTHIA run (model.output_classes=synthia16) is rebuilt with 16 outputs, not this config's 19."""
  import json  # pylint: disable=g-import-not-at-top
  from configs import source_only  # pylint: disable=g-import-not-at-top
  config = source_only.get_config()
  (tmp_path / 'config.json').write_text(json.dumps({'model': {**config.model.to_dict(),
                                                              'output_classes': 'synthia16'}}, default=str))
  assert predict.with_run_model(config, str(tmp_path)).model.output_classes == 'synthia16'
  assert config.model.output_classes == 'all'
