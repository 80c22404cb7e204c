"""python -m rtda_jax.report: every plot from two runs' files, a run missing a file named, the confusion matrix that
evaluation now saves."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from rtda_jax import labels as labels_lib
from rtda_jax import report

PNGS = ('miou.png', 'losses.png', 'per_class_iou.png', 'discriminator.png')


def write_run(workdir: str, *, adversarial: bool, steps: int = 40, seed: int = 0, init_from: str | None = None,
              confusion: bool = True, metrics: bool = True) -> None:
  """A workdir with the files a run writes, in their format: config.json, metrics.jsonl (losses every 10 steps,
  eval/miou every 20), eval.json (with `confusion`), eval_init.json for a warm start."""
  rng = np.random.default_rng(seed)
  os.makedirs(workdir, exist_ok=True)
  config = {'method': 'adversarial' if adversarial else 'supervised',
            'model': {'name': 'bisenet', 'init_from': init_from}}
  if adversarial:
    config['adv'] = {'gan': 'bce'}
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config, f)
  if metrics:
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
      for step in range(10, steps + 1, 10):
        record = {'step': step, 'loss': 2.0 / step ** 0.5, 'loss_seg': 1.0 / step ** 0.5, 'loss_aux': 0.9,
                  'lr': 0.01, 'images_per_sec': 10.0}
        if adversarial:
          record.update({'loss_adv': 1e-3, 'loss_disc0': 0.69 - step / 1000, 'disc_accuracy0': 0.5 + step / 1000})
        f.write(json.dumps(record) + '\n')
        if step % 20 == 0:
          f.write(json.dumps({'step': step, 'eval/miou': 10.0 + step / 4, 'eval/pixel_accuracy': 60.0}) + '\n')
      f.write('{"step": 41, "loss": 1.')  # a run still writing: a cut last line
  cm = rng.integers(0, 1000, (19, 19)) + np.diag(rng.integers(1000, 5000, 19))
  cm[3] = 0  # a class absent from the ground truth: an empty row
  result = {'dataset': 'cityscapes', 'split': 'val', 'step': steps, 'num_images': 8, 'miou': 20.0 + seed,
            'per_class_iou': {n: float(rng.uniform(0, 90)) for n in labels_lib.CLASS_NAMES},
            'pixel_accuracy': 70.0, 'mean_class_accuracy': 40.0, 'fwiou': 55.0}
  result['per_class_iou']['wall'] = None
  if confusion:
    result['confusion'] = cm.tolist()
  with open(os.path.join(workdir, 'eval.json'), 'w') as f:
    json.dump(result, f)
  if init_from:
    with open(os.path.join(workdir, 'eval_init.json'), 'w') as f:
      json.dump({**result, 'step': 0, 'miou': 12.0, 'init_from': init_from}, f)


def assert_png(path: str) -> None:
  assert os.path.getsize(path) > 1000, path
  with Image.open(path) as im:
    assert im.format == 'PNG' and min(im.size) > 100


def test_two_runs_give_every_plot(tmp_path, capsys):
  source, adv = str(tmp_path / 'runs' / 'source'), str(tmp_path / 'runs' / 'adv')
  write_run(source, adversarial=False, steps=60, seed=1)
  write_run(adv, adversarial=True, seed=2, init_from=source)
  out = str(tmp_path / 'report')
  assert report.main([source, adv, '--out', out]) == 0
  result_files = sorted(os.listdir(out))
  assert result_files == sorted([*PNGS, 'confusion_source.png', 'confusion_adv.png'])
  for name in result_files:
    assert_png(os.path.join(out, name))
  assert 'missing' not in capsys.readouterr().out


def test_a_run_missing_files_is_named_and_left_out(tmp_path, capsys):
  full, bare, absent = (str(tmp_path / n) for n in ('full', 'bare', 'absent'))
  write_run(full, adversarial=False)
  write_run(bare, adversarial=False, confusion=False, metrics=False)
  result = report.make_report([full, bare, absent], str(tmp_path / 'out'))
  printed = capsys.readouterr().out
  assert os.path.join(bare, 'metrics.jsonl') in printed  # the missing file, by name
  assert f'{absent}: not a folder' in printed
  assert f'{bare}: eval.json has no confusion matrix' in printed
  assert 'no adversarial run' in printed  # no discriminator plot, and why
  assert [(w, f) for w, f, _ in result['missing']] == [(bare, 'metrics.jsonl'), (absent, '')]
  names = sorted(os.path.basename(p) for p in result['written'])
  assert names == ['confusion_full.png', 'losses.png', 'miou.png', 'per_class_iou.png']
  # Only runs without any usable file: nothing written, exit status 1.
  assert report.main([absent, '--out', str(tmp_path / 'none')]) == 1


def test_series_takes_the_last_value_of_a_step_and_skips_broken_lines(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 10, "loss": 3.0}\n{"step": 20, "loss": NaN}\n{"step": 10, "loss": 2.0}\n'
                  '{"step": 30, "eval/miou": 5.0}\n{"step": 30, "loss": 1.')
  steps, values = report.series(report.read_metrics(str(path)), 'loss')
  assert steps.tolist() == [10] and values.tolist() == [2.0]  # a resumed run's repeated step: the last record


def test_row_normalised_matches_a_loop():
  cm = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
  norm = report.row_normalised(cm)
  for i in (0, 2):
    for j in range(3):
      assert norm[i, j] == pytest.approx(cm[i, j] / sum(cm[i]))
  assert np.isnan(norm[1]).all()  # no ground truth of class 1: nothing to normalise


def test_warm_start_continues_the_steps_of_its_init_run(tmp_path):
  source, adv = str(tmp_path / 'source'), str(tmp_path / 'adv')
  write_run(source, adversarial=False, steps=60)
  write_run(adv, adversarial=True, steps=40, init_from=source)
  runs = [report.Run(source, 'source'), report.Run(adv, 'adv')]
  report.continue_steps(runs)
  steps, miou = runs[1].miou_curve()
  assert steps.tolist() == [60, 80, 100] and miou[0] == 12.0  # eval_init (step 0) sits at the source's last step
  alone = report.Run(adv, 'adv')
  report.continue_steps([alone])
  assert alone.miou_curve()[0].tolist() == [0, 20, 40]


def test_discriminator_chance_levels():
  assert report.CHANCE_LOSS['bce'] == pytest.approx(math.log(2))  # BCE of an output 1/2 towards 0 and towards 1
  assert report.CHANCE_LOSS['ls'] == pytest.approx(0.5 * (0.5 ** 2 + 0.5 ** 2))  # mean squared error of 1/2


def test_evaluation_saves_the_confusion_matrix_its_scores_come_from(data_root, tmp_path):
  import jax
  from rtda_jax import methods, parallel
  from rtda_jax import evaluate
  from tests.trainer_utils import TINY_MODEL, tiny_config
  config = tiny_config(data_root, **{'model.name': TINY_MODEL})
  method = methods.get_method(config)
  variables = method.init_variables(jax.random.PRNGKey(0), (64, 64))
  workdir = str(tmp_path / 'run')
  evaluate.evaluate(method, variables, config, parallel.make_mesh(1), step=0, workdir=workdir)
  with open(os.path.join(workdir, 'eval.json')) as f:
    saved = json.load(f)
  cm = np.array(saved['confusion'], np.int64)
  assert cm.shape == (19, 19) and cm.sum() > 0
  # The scores again from the saved matrix, by the IoU formula (rows = ground truth).
  tp, gt, pred = np.diag(cm), cm.sum(1), cm.sum(0)
  iou = [tp[c] / (gt[c] + pred[c] - tp[c]) for c in range(19) if gt[c] + pred[c] > 0]
  assert saved['miou'] == pytest.approx(100 * np.mean(iou), rel=1e-12)
  assert saved['pixel_accuracy'] == pytest.approx(100 * tp.sum() / cm.sum(), rel=1e-12)
  out = str(tmp_path / 'report')
  written = report.make_report([workdir], out)['written']
  assert os.path.join(out, 'confusion_run.png') in written
  assert_png(os.path.join(out, 'confusion_run.png'))
