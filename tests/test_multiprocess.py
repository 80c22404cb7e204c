"""Multi-process launches: the environment a launch is described by, each process's rows of the global batches, and
two real processes on 127.0.0.1 (one CPU device each, gloo collectives) that train, checkpoint, resume and evaluate
exactly as one process with two devices does."""

from __future__ import annotations

import collections
import glob
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from rtda_jax import errors, parallel
from rtda_jax.data import pipeline
from tests import xla_flags
from tests.trainer_utils import TINY, TINY_MODEL, read_eval, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANUAL = {'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1'}


# ---- which launch the environment describes ---------------------------------------------------------------------


def test_a_manual_launch_passes_every_argument():
  args = parallel.distributed_args({**MANUAL, 'JAX_LOCAL_DEVICE_IDS': '0,1'})
  assert args == {'coordinator_address': '10.0.0.1:1234', 'num_processes': 2, 'process_id': 1,
                  'local_device_ids': [0, 1], 'cluster_detection_method': 'deactivate'}
  assert parallel.distributed_args(MANUAL)['local_device_ids'] is None  # optional: every local device


@pytest.mark.parametrize('missing', sorted(MANUAL))
def test_a_partial_manual_launch_is_an_error_naming_what_is_missing(missing):
  env = {k: v for k, v in MANUAL.items() if k != missing}
  with pytest.raises(errors.ConfigError, match=f'{missing} is not'):
    parallel.distributed_args(env)


@pytest.mark.parametrize('env, match', [
    ({'JAX_NUM_PROCESSES': 'two'}, 'must be integers'),
    ({'JAX_PROCESS_ID': '2'}, r'JAX_PROCESS_ID=2 must be in \[0, JAX_NUM_PROCESSES=2\)'),
    ({'JAX_COORDINATOR_ADDRESS': 'host'}, 'host:port')])
def test_bad_manual_values_are_errors(env, match):
  with pytest.raises(errors.ConfigError, match=match):
    parallel.distributed_args({**MANUAL, **env})


def test_cluster_launches_use_jax_detection_and_single_processes_none():
  srun = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'node[01-02]', 'SLURM_PROCID': '1', 'SLURM_NTASKS': '4'}
  assert parallel.distributed_args(srun) == {}
  assert parallel.distributed_args({'OMPI_COMM_WORLD_SIZE': '2'}) == {}
  batch_script = {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}  # sbatch's shell, outside srun: one process
  interactive = {**srun, 'SLURM_PROCID': '0', 'SLURM_STEP_NUM_TASKS': '1'}  # salloc -n4's shell: a 1-task step
  assert parallel.distributed_args({**srun, 'SLURM_STEP_NUM_TASKS': '4'}) == {}
  for single in ({}, batch_script, interactive, {**srun, 'SLURM_NTASKS': '1'}, {'OMPI_COMM_WORLD_SIZE': '1'},
                 {**MANUAL, 'JAX_NUM_PROCESSES': '1', 'JAX_PROCESS_ID': '0'}):
    assert parallel.distributed_args(single) is None, single


# ---- each process's rows of the global batch ----------------------------------------------------------------------


def _fake_processes(monkeypatch, count: int, index: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, 'process_count', lambda *a, **k: count)
  monkeypatch.setattr(jax, 'process_index', lambda *a, **k: index)


def _batches(cfg, monkeypatch, count: int, index: int, num_steps: int, num_epochs=None, shape=TINY):
  with monkeypatch.context() as m:
    _fake_processes(m, count, index)
    it = pipeline.train_loader(cfg, 'gta5', 'train', 4, seed=5, shape=shape, num_epochs=num_epochs)
    return [next(it) for _ in range(num_steps)] if num_epochs is None else list(it)


@pytest.mark.parametrize('resize_mode, shape', [('resize', TINY), ('crop', (32, 48))])
def test_processes_read_their_rows_of_the_one_process_batches(data_root, monkeypatch, resize_mode, shape):
  """Two processes' batches side by side are the batches of one process with the whole batch, random crops
  included; so a run does not depend on the number of processes, and each image of a step is read by exactly one
  process."""
  cfg = tiny_config(data_root).data
  cfg.resize_mode = resize_mode
  one = _batches(cfg, monkeypatch, 1, 0, 10, shape=shape)
  two = [_batches(cfg, monkeypatch, 2, p, 10, shape=shape) for p in range(2)]
  for step, whole in enumerate(one):  # 10 steps of 4 = 2.5 epochs of the 16 images: crosses epochs
    for key in ('image', 'label'):
      assert two[0][step][key].shape[0] == two[1][step][key].shape[0] == 2
      np.testing.assert_array_equal(np.concatenate([two[0][step][key], two[1][step][key]]), whole[key])


def test_an_epoch_is_split_between_the_processes(data_root, monkeypatch):
  cfg = tiny_config(data_root).data
  one = _batches(cfg, monkeypatch, 1, 0, 0, num_epochs=1)
  two = [_batches(cfg, monkeypatch, 2, p, 0, num_epochs=1) for p in range(2)]
  assert len(one) == len(two[0]) == len(two[1]) == 4  # 16 images, batches of 4: 2 rows from each process
  seen = [{im.tobytes() for b in batches for im in b['image']} for batches in two]
  assert len(seen[0]) == len(seen[1]) == 8 and not seen[0] & seen[1]
  assert seen[0] | seen[1] == {im.tobytes() for b in one for im in b['image']}


# ---- two processes on 127.0.0.1 -----------------------------------------------------------------------------------

# Runs app.run for each (mode, overrides) of a JSON spec, logging every record each data source hands out to
# <log>.<JAX_PROCESS_ID or single>: "<domain> <split> <index>" lines.
_DRIVER = r'''
import json, os, sys, threading
sys.path.insert(0, {root!r})
from rtda_jax import app
from rtda_jax.data import pipeline
from tests.trainer_utils import tiny_config

spec = json.loads(sys.argv[1])
log = open(spec['log'] + '.' + os.environ.get('JAX_PROCESS_ID', 'single'), 'a', buffering=1)
lock = threading.Lock()
real_source = pipeline.data_source


class Logged:
  def __init__(self, source, tag):
    self._source, self._tag = source, tag
  def __len__(self):
    return len(self._source)
  def __getitem__(self, i):
    with lock:
      log.write(f'{{self._tag}} {{int(i)}}\n')
    return self._source[i]
  def __repr__(self):
    return repr(self._source)


pipeline.data_source = lambda c, domain, split: Logged(real_source(c, domain, split), f'{{domain}} {{split}}')
for mode, overrides, *other in spec['runs']:  # [mode, overrides] or [mode, overrides, workdir, config, preset]
  workdir, config_name, preset = other or (spec['workdir'], 'source_only', None)
  config = tiny_config(spec['root'], config_name, preset, **{{**spec['overrides'], **overrides}})
  app.run(config, workdir=workdir, mode=mode)
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(spec: dict, num_processes: int, devices_per_process: int, timeout: float = 240) -> list[str]:
  """Runs the driver in `num_processes` processes (a manual launch on 127.0.0.1 when more than one), each with
  `devices_per_process` CPU devices; fails with their output unless every process exits 0, else returns each
  process's output (stdout and stderr)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'OMPI_', 'JAX_', 'TPU_'))}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags.subprocess_flags(devices_per_process))
  if num_processes > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{_free_port()}', JAX_NUM_PROCESSES=str(num_processes))
  script = _DRIVER.format(root=ROOT)
  start = time.perf_counter()
  procs = [subprocess.Popen([sys.executable, '-c', script, json.dumps(spec)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**env, **({'JAX_PROCESS_ID': str(p)} if num_processes > 1 else {})})
           for p in range(num_processes)]
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=timeout)[0])
  finally:
    for proc in procs:  # a process whose peer died waits for it: stop it
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  print(f'{num_processes} process(es): {time.perf_counter() - start:.1f} s')
  for p, (proc, out) in enumerate(zip(procs, outputs)):
    assert proc.returncode == 0, f'process {p} of {num_processes} exited {proc.returncode}:\n{out[-4000:]}'
  return outputs


def _saved_state(workdir: str, step: int) -> dict:
  """Checkpoint `step` of `workdir/checkpoints/last` as numpy arrays (its shardings name the two processes'
  devices, which this process does not have)."""
  from rtda_jax import checkpointing  # pylint: disable=g-import-not-at-top
  return checkpointing.read_host_tree(os.path.join(workdir, 'checkpoints', 'last', str(step), 'state'))


def _metrics(workdir: str) -> list[dict]:
  """metrics.jsonl without the timing (images_per_sec differs from run to run)."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k != 'images_per_sec'} for line in f if line.strip()]


def _reads(log: str) -> collections.Counter:
  with open(log) as f:
    return collections.Counter(tuple(line.split()) for line in f if line.strip())


@pytest.mark.slow
def test_two_processes_train_resume_and_evaluate_as_one_process_with_two_devices(data_root, tmp_path):
  """Process p of 2 (one CPU device each, gloo) against one process with 2 CPU devices: the same mesh of 2 devices
  and the same global batches (test_processes_read_their_rows_of_the_one_process_batches), so every device computes
  the same numbers. The cross-device sums (gradients, BatchNorm statistics, the loss) add 2 terms, a + b, which
  rounds alike in any order and in either collective implementation: parameters, metrics and eval.json are equal,
  not merely close."""
  if len(os.sched_getaffinity(0)) < 2:
    # Measured (session 8, RESULTS.md): pinned to one CPU (taskset -c 0), the two processes' step 3 differs from the
    # one process's in 14 of the tiny net's leaves by 1-2 ulp (<= 3e-7), the same in every repeat; unpinned, and the
    # one process pinned or not, all are equal. Not explained yet (not Eigen's threading:
    # --xla_cpu_multi_thread_eigen=false changes nothing), so the bit-for-bit claim is made only where it was seen.
    pytest.skip('needs 2 CPUs: on one CPU two gloo processes round a few leaves differently (RESULTS.md, session 8)')
  overrides = {'model.name': TINY_MODEL, 'num_devices': 0, 'train.checkpoint_every_steps': 3, 'jax_cache_dir': 'none'}
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  spec = lambda workdir, runs, log: {'root': data_root, 'workdir': workdir, 'runs': runs, 'overrides': overrides,
                                     'log': str(tmp_path / log)}
  # Pseudo-labels of the 16 train images from the run's last checkpoint (the MBT path of self-training).
  pseudo = lambda run: ['pseudolabel', {'mbt.workdirs': run, 'mbt.name': f'mp_{os.path.basename(run)}'},
                        run + '_pseudo', 'fda', 'mbt']
  _launch(spec(one, [['train', {}], pseudo(one)], 'one'), num_processes=1, devices_per_process=2)
  # Stop after 3 steps (checkpoint), then resume to the end (6 steps, evaluation) and evaluate the last checkpoint.
  _launch(spec(two, [['train', {'train.stop_after_steps': 3}]], 'first'), num_processes=2, devices_per_process=1)
  assert _saved_state(two, 3)['seg']['step'] == 3 and not os.path.exists(os.path.join(two, 'eval.json'))
  outputs = _launch(spec(two, [['train', {}], ['evaluate', {}], pseudo(two)], 'second'), num_processes=2,
                    devices_per_process=1)
  # Printed once: the first process prints the three evaluation tables and the pseudo-label summary, the other none.
  assert outputs[0].count('mIoU') >= 3 and 'Pseudo-labels' in outputs[0]
  assert 'mIoU' not in outputs[1] and 'Pseudo-labels' not in outputs[1], outputs[1][-2000:]

  assert read_eval(two) == read_eval(one) and read_eval(two)['num_images'] == 8
  import jax  # pylint: disable=g-import-not-at-top
  for step in (3, 6):  # every network, optimiser state, PRNG key and the step
    saved_one, saved_two = _saved_state(one, step), _saved_state(two, step)
    assert jax.tree.structure(saved_one) == jax.tree.structure(saved_two)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(saved_one), jax.tree.leaves(saved_two)):
      np.testing.assert_array_equal(a, b, err_msg=f'step {step} {jax.tree_util.keystr(path)}')
  # Files written once: one line per logged step (2, 4, 6) and evaluation, across the restart too.
  assert _metrics(two) == _metrics(one)
  assert [m['step'] for m in _metrics(two) if 'loss' in m] == [2, 4, 6]
  assert sorted(os.listdir(os.path.join(two, 'checkpoints', 'last'))) == ['3', '6']
  # Evaluation: the processes read disjoint blocks of the val split that together hold every image, each image once
  # per evaluation (three in the second launch: the end of training, --mode=evaluate and the ensemble's evaluation
  # of --mode=pseudolabel).
  val = [collections.Counter({k[2]: n for k, n in _reads(str(tmp_path / f'second.{p}')).items()
                              if k[:2] == ('cityscapes', 'val')}) for p in range(2)]
  assert not set(val[0]) & set(val[1])
  assert sorted(int(i) for i in {**val[0], **val[1]}) == list(range(8))
  assert set(val[0].values()) == set(val[1].values()) == {3}
  # Pseudo-labels: the same labels of every image, each written by one process, counted over both.
  info = [json.load(open(os.path.join(run + '_pseudo', 'pseudolabels.json'))) for run in (one, two)]
  for key in ('num_images', 'kept_fraction', 'pixels_per_class', 'ignored_pixels', 'thresholds'):
    assert info[0][key] == info[1][key], key
  assert info[1]['num_images'] == 16
  labels = [sorted(glob.glob(os.path.join(i['pseudo_dir'], 'gtFine', 'train', '*', '*_gtFine_labelIds.png')))
            for i in info]
  assert len(labels[0]) == len(labels[1]) == 16
  for a, b in zip(*labels):
    np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)), err_msg=b)
