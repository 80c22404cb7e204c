"""What a run guarantees when things go wrong: no non-finite checkpoint, one run per workdir, config.json only for a
validated launch (with a history), damaged checkpoints and a full disk named in one message, batch sizes checked
before training, and a stop by signal that saves and then raises `Interrupted`."""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rtda_jax import app, checkpointing, errors, files, trainer, workdir as workdirs
from tests.trainer_utils import TINY_MODEL, assert_trees_equal, read_eval, restore_params, tiny_config


def cfg(data_root: str, config_name: str = 'source_only', **overrides):
  """A tiny run (source-only by default) of the two-conv model: the trainer's guarantees do not depend on the
  network."""
  return tiny_config(data_root, config_name, **{'model.name': TINY_MODEL, **overrides})


def last_steps(workdir: str) -> list[int]:
  return checkpointing.checkpoint_steps(os.path.join(workdir, 'checkpoints', 'last'))


def saved_tree(workdir: str, step: int, kind: str = 'last') -> dict:
  """A checkpoint's raw state as numpy arrays, read with orbax directly (not through the Checkpointer)."""
  with ocp.PyTreeCheckpointer() as ckpt:
    return ckpt.restore(os.path.join(workdir, 'checkpoints', kind, str(step), 'state'))


@pytest.fixture(scope='module')
def kept_run(data_root, tmp_path_factory):
  """4 steps, a checkpoint every 2: `last` keeps steps 2 and 4. Tests damage copies of it."""
  workdir = str(tmp_path_factory.mktemp('kept'))
  app.run(cfg(data_root, **{'train.num_steps': 4, 'train.checkpoint_every_steps': 2}), workdir=workdir)
  assert last_steps(workdir) == [2, 4]
  return workdir


def copy_of(workdir: str, tmp_path) -> str:
  target = str(tmp_path / 'copy')
  shutil.copytree(workdir, target)
  return target


# ---- item 1: no non-finite checkpoint ------------------------------------------------------------------------------


def test_all_finite_is_numpy_isfinite_over_the_floating_leaves():
  tree = {'w': jnp.ones((3, 4)), 'b': jnp.zeros(2, jnp.bfloat16), 'count': jnp.int32(7), 'key': jax.random.key(0)}
  assert checkpointing.all_finite(tree)
  for bad in (np.nan, np.inf, -np.inf):
    w = np.ones((3, 4), np.float32)
    w[2, 1] = bad
    assert not checkpointing.all_finite({**tree, 'w': jnp.asarray(w)})
    assert not np.isfinite(w).all()  # the independent statement of the same fact
  assert checkpointing.all_finite({'count': jnp.int32(1)})  # no floating leaf: nothing can be non-finite


def test_a_diverging_run_never_saves_a_non_finite_checkpoint(data_root, tmp_path):
  workdir = str(tmp_path / 'diverge')
  every_step = {'train.checkpoint_every_steps': 1, 'train.max_checkpoints': 8}
  app.run(cfg(data_root, **every_step, **{'train.num_steps': 4}), workdir=workdir)  # 4 sane steps
  with pytest.raises(FloatingPointError) as info:  # then learning_rate=1e9: NaN/Inf within a few steps
    app.run(cfg(data_root, **every_step, **{'train.learning_rate': 1e9, 'train.num_steps': 8}), workdir=workdir)
  assert isinstance(info.value, errors.UserError)  # main.py prints it alone
  steps = last_steps(workdir)
  assert steps[:4] == [1, 2, 3, 4] and steps[-1] < 8, steps
  named = re.search(r'last good checkpoint \(step (\d+)\)', str(info.value))
  assert named and int(named.group(1)) == steps[-1], str(info.value)  # the message's step is the newest on disk
  for kind in ('last', 'best'):
    for step in checkpointing.checkpoint_steps(os.path.join(workdir, 'checkpoints', kind)):
      for leaf in jax.tree.leaves(saved_tree(workdir, step, kind)):
        leaf = np.asarray(leaf)
        if np.issubdtype(leaf.dtype, np.floating):
          assert np.isfinite(leaf).all(), (kind, step)
  assert not os.path.exists(os.path.join(workdir, workdirs.LOCK_FILE))  # released on the error
  # A finite state after a 1e9 update is still ruined; train.resume_step goes back to the last sane one (step 4),
  # and the run trains to its end with a sane learning rate.
  result = app.run(cfg(data_root, **every_step, **{'train.num_steps': 8, 'train.resume_step': 4}), workdir=workdir)
  assert result['step'] == 8 and np.isfinite(result['miou'])
  losses = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl')) if '"loss"' in line]
  assert [l['step'] for l in losses] == [2, 4, 6, 8] and all(np.isfinite(l['loss']) for l in losses)


def test_resume_step_must_name_a_kept_checkpoint(kept_run, data_root, tmp_path):
  workdir = copy_of(kept_run, tmp_path)
  with pytest.raises(FileNotFoundError, match=r'train.resume_step=3.*kept steps are \[2, 4\]') as info:
    app.run(cfg(data_root, **{'train.num_steps': 4, 'train.resume_step': 3}), workdir=workdir)
  assert isinstance(info.value, errors.UserError)
  assert last_steps(workdir) == [2, 4]


# ---- item 5: damaged checkpoints --------------------------------------------------------------------------------


def _truncate_blobs(step_dir: str) -> None:
  """Cuts each data file of the state's OCDBT databases to half its size (as a copy or a disk failure would)."""
  blobs = glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'), recursive=True)
  assert blobs
  for blob in blobs:
    with open(blob, 'r+b') as f:
      f.truncate(os.path.getsize(blob) // 2)


DAMAGE = {
    'truncated blob': _truncate_blobs,
    'missing _METADATA': lambda d: os.remove(os.path.join(d, 'state', '_METADATA')),
    'missing meta/metadata': lambda d: os.remove(os.path.join(d, 'meta', 'metadata')),
}


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_a_damaged_checkpoint_is_one_clear_error(damage, kept_run, data_root, tmp_path):
  workdir = copy_of(kept_run, tmp_path)
  folder = os.path.join(os.path.abspath(workdir), 'checkpoints', 'last')
  DAMAGE[damage](os.path.join(folder, '4'))
  with pytest.raises(errors.WorkdirError) as info:
    app.run(cfg(data_root, **{'train.num_steps': 6}), workdir=workdir)
  message = str(info.value)
  assert f'Checkpoint step 4 in {folder} is unreadable' in message, message
  assert 'Readable steps there: [2]' in message and '--config.train.resume_step=N' in message, message
  assert info.value.__cause__ is not None  # orbax's error is kept for --verbosity=1
  assert len(message) < 1200, message  # one message, not a TensorStore spec
  assert not os.path.exists(os.path.join(workdir, '.lock'))


def test_resume_step_recovers_from_a_damaged_newest_checkpoint_bit_for_bit(kept_run, data_root, tmp_path):
  workdir = copy_of(kept_run, tmp_path)
  _truncate_blobs(os.path.join(workdir, 'checkpoints', 'last', '4'))
  result = app.run(cfg(data_root, **{'train.num_steps': 4, 'train.resume_step': 2}), workdir=workdir)
  assert result['step'] == 4 and last_steps(workdir) == [2, 4]
  assert_trees_equal(restore_params(kept_run), restore_params(workdir))  # steps 3-4 again, exactly
  assert read_eval(kept_run) == read_eval(workdir)
  aside = os.listdir(os.path.join(workdir, 'checkpoints', 'set_aside'))
  assert any(name.startswith('last_4_') for name in aside), aside  # the damaged one is moved, not deleted
  history = [json.loads(line) for line in open(os.path.join(workdir, workdirs.HISTORY_FILE))]
  assert [h['start_step'] for h in history] == [0, 2]  # the first launch and this one
  assert history[-1]['config']['train']['resume_step'] == 2
  assert json.load(open(os.path.join(workdir, 'config.json'))) == history[-1]['config']


# ---- item 6: disk full ------------------------------------------------------------------------------------------


def test_disk_full_errors_are_recognised():
  assert checkpointing.is_disk_full(OSError(errno.ENOSPC, 'No space left on device'))
  wrapped = ValueError('writing failed')
  wrapped.__cause__ = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/x/d/abc"')
  assert checkpointing.is_disk_full(wrapped)
  assert not checkpointing.is_disk_full(OSError(errno.EACCES, 'Permission denied'))
  assert not checkpointing.is_disk_full(ValueError('OUT_OF_RANGE: bad byte range'))
  assert not checkpointing.is_disk_full(ValueError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate'))


@pytest.mark.parametrize('failure', ['tensorstore', 'oserror'])
def test_disk_full_while_saving_is_one_clear_error_and_keeps_the_previous_checkpoint(failure, kept_run, data_root,
                                                                                   tmp_path, monkeypatch):
  workdir = copy_of(kept_run, tmp_path)
  real_save = ocp.CheckpointManager.save

  def full_disk_save(self, step, *args, **kwargs):
    if step == 6:
      os.makedirs(os.path.join(str(self.directory), '6.orbax-checkpoint-tmp-123', 'state'))  # a partial write
      if failure == 'oserror':
        raise OSError(errno.ENOSPC, 'No space left on device')
      raise ValueError('Event loop is closed') from ValueError(
          'RESOURCE_EXHAUSTED: Error writing local file "state/d/0123": [OS error 28: No space left on device]')
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_disk_save)
  with pytest.raises(errors.WorkdirError) as info:
    app.run(cfg(data_root, **{'train.num_steps': 6, 'train.checkpoint_every_steps': 2}), workdir=workdir)
  message = str(info.value)
  # The state's bytes, counted independently from the saved tree of the same run.
  need = sum(np.asarray(x).nbytes for x in jax.tree.leaves(saved_tree(workdir, 4)))
  assert 'disk is full' in message and workdir in message and 'step 6' in message, message
  assert f'{checkpointing.format_bytes(need)} needed' in message and 'free' in message, message
  assert re.search(r'failed with \d+(\.\d)? (B|KiB|MiB|GiB) free in ', message), message
  assert 'last good checkpoint (step 4)' in message, message
  assert last_steps(workdir) == [2, 4]
  assert not glob.glob(os.path.join(workdir, 'checkpoints', 'last', '6.orbax-checkpoint-tmp*'))  # space given back
  monkeypatch.setattr(ocp.CheckpointManager, 'save', real_save)
  assert_trees_equal(saved_tree(workdir, 4), saved_tree(kept_run, 4))


# ---- item 3: the workdir lock ----------------------------------------------------------------------------------


def write_lock(workdir: str, **info) -> str:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, workdirs.LOCK_FILE)
  with open(path, 'w') as f:
    json.dump({'host': socket.gethostname(), 'started': '2024-01-01T00:00:00', **info}, f)
  return path


@pytest.fixture
def live_pid():
  """The pid of another live process (a `sleep`), killed after the test."""
  proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
  yield proc.pid
  proc.kill()
  proc.wait()


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def test_a_live_run_on_the_workdir_refuses_a_second(data_root, tmp_path, live_pid):
  workdir = str(tmp_path / 'busy')
  path = write_lock(workdir, pid=live_pid)
  before = open(path).read()
  with pytest.raises(errors.WorkdirError, match=rf'in use by another run \(pid {live_pid} on host '
                                                rf'{re.escape(repr(socket.gethostname()))}'):
    app.run(cfg(data_root), workdir=workdir)
  assert open(path).read() == before  # the holder's lock is untouched
  assert not os.path.exists(os.path.join(workdir, 'config.json'))


def test_a_lock_of_another_host_is_refused(tmp_path):
  path = write_lock(str(tmp_path), pid=1, host='node-that-is-not-this-one')
  with pytest.raises(errors.WorkdirError,
                     match=rf"pid 1 on host 'node-that-is-not-this-one'.*delete {re.escape(path)}"):
    workdirs.WorkdirLock(str(tmp_path)).acquire()


def test_a_lock_of_a_dead_process_is_recovered_with_a_warning(tmp_path, caplog):
  write_lock(str(tmp_path), pid=dead_pid())
  with caplog.at_level('WARNING'), workdirs.WorkdirLock(str(tmp_path)) as lock:
    assert json.load(open(lock.path))['pid'] == os.getpid()
  assert 'no longer running' in caplog.text
  assert not os.path.exists(lock.path)  # released


def test_a_lock_whose_pid_was_reused_is_recovered(tmp_path, live_pid):
  # The pid is alive, but its process started at another time than the lock's holder: not the holder.
  write_lock(str(tmp_path), pid=live_pid, pid_start=1)
  with workdirs.WorkdirLock(str(tmp_path)) as lock:
    assert json.load(open(lock.path))['pid'] == os.getpid()


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
  with workdirs.WorkdirLock(str(tmp_path)):
    with pytest.raises(errors.WorkdirError, match=f'pid {os.getpid()}'):
      workdirs.WorkdirLock(str(tmp_path)).acquire()


def test_only_process_0_takes_the_lock(tmp_path, live_pid, monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  with workdirs.WorkdirLock(str(tmp_path / 'fresh')):
    assert not os.path.exists(str(tmp_path / 'fresh' / workdirs.LOCK_FILE))
  write_lock(str(tmp_path / 'held'), pid=live_pid)  # held by process 0 of the same run
  with workdirs.WorkdirLock(str(tmp_path / 'held')):
    pass


def test_only_process_0_rewrites_metrics_jsonl_on_resume(tmp_path, monkeypatch):
  """A resumed run drops the lines logged after its checkpoint; a second process doing it too, while the first
  appended, lost a line (stop 20's CI): the others leave the file alone."""
  lines = [json.dumps({'step': s, 'loss': 1.0}) + '\n' for s in (2, 4)]
  (tmp_path / 'metrics.jsonl').write_text(''.join(lines))
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  trainer.MetricWriter(str(tmp_path), resume_step=3).close()
  assert (tmp_path / 'metrics.jsonl').read_text() == ''.join(lines)
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  trainer.MetricWriter(str(tmp_path), resume_step=3).close()
  assert (tmp_path / 'metrics.jsonl').read_text() == lines[0]
  assert sorted(os.listdir(tmp_path)) == ['metrics.jsonl', 'tensorboard']  # no temporary file left
  # A run killed while it appended leaves a line cut short: the resume drops it instead of failing on it.
  (tmp_path / 'metrics.jsonl').write_text(lines[0] + '{"step": 3, "lo')
  trainer.MetricWriter(str(tmp_path), resume_step=3).close()
  assert (tmp_path / 'metrics.jsonl').read_text() == lines[0]


# ---- files several processes share ----------------------------------------------------------------------------------


def test_concurrent_atomic_writes_never_show_a_partial_file(tmp_path):
  """Two writers of one file and a reader, at once: every read parses and is one writer's whole file, and no
  temporary file is left. With one shared `path + '.tmp'`, a writer's os.replace found it gone (FileNotFoundError)
  or installed the other's half-written text."""
  import threading  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'eval.json')
  payloads = [{'writer': w, 'values': list(range(20000))} for w in range(2)]
  failures, reads, done = [], [], threading.Event()

  def write(w):
    try:
      for _ in range(40):
        files.write_json(path, payloads[w])
    except Exception as e:  # pylint: disable=broad-except
      failures.append(e)

  def read():
    while not done.is_set():
      if os.path.exists(path):
        with open(path) as f:
          reads.append(json.load(f)['writer'])  # a partial file fails to parse here

  reader = threading.Thread(target=read)
  reader.start()
  writers = [threading.Thread(target=write, args=(w,)) for w in range(2)]
  for t in writers:
    t.start()
  for t in writers:
    t.join()
  done.set()
  reader.join()
  assert not failures, failures
  assert reads and set(reads) <= {0, 1}
  with open(path) as f:
    assert json.load(f) in payloads
  assert os.listdir(tmp_path) == ['eval.json']


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
  path = str(tmp_path / 'fid.json')
  files.write_json(path, {'fd': 1.0})
  with pytest.raises(TypeError):
    files.write_json(path, {'fd': object()})  # not JSON: fails before anything is written
  with pytest.raises(TypeError):
    files.write_atomic(path, 12)  # fails while writing the temporary file
  with open(path) as f:
    assert json.load(f) == {'fd': 1.0}
  assert os.listdir(tmp_path) == ['fid.json']


def test_processes_that_find_a_domain_missing_at_once_generate_it_once(tmp_path):
  """The embedded benchmark's folders: two processes of one host (threads here: flock excludes two open files of
  one process as it does two processes) that both find the folder missing write it once; the second waits, then
  finds it complete."""
  import threading  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from rtda_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  out_dir, calls, results = str(tmp_path / 'gta5'), [], []

  def write(folder):
    calls.append(folder)
    time.sleep(0.3)  # long enough for the other thread to arrive while this one writes
    with open(os.path.join(folder, 'a.png'), 'w') as f:
      f.write('image')

  threads = [threading.Thread(target=lambda: results.append(synthetic._ensure(out_dir, {'v': 1}, write)))
             for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert results == [out_dir, out_dir] and len(calls) == 1
  assert sorted(os.listdir(out_dir)) == ['a.png', synthetic.MARKER]
  assert sorted(os.listdir(tmp_path)) == ['.gta5.lock', 'gta5']  # no temporary or old folder left


@pytest.mark.parametrize('index', [0, 1])
def test_in_a_launch_process_0_prepares_the_data_before_the_others(monkeypatch, index):
  """builders.prepare in a 2-process launch: process 0 generates and builds, then every process meets at a
  barrier, then the others open what process 0 built (so they never build the same files at once)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from rtda_jax.data import builders  # pylint: disable=g-import-not-at-top
  events = []
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: True)
  monkeypatch.setattr(jax, 'process_count', lambda *a, **k: 2)
  monkeypatch.setattr(jax, 'process_index', lambda *a, **k: index)
  monkeypatch.setattr(multihost_utils, 'sync_global_devices', lambda name: events.append('barrier'))
  monkeypatch.setattr(builders, '_prepare', lambda *a: events.append('prepare') or {'gta5': index})
  assert builders.prepare(None) == {'gta5': index}
  assert events == (['prepare', 'barrier'] if index == 0 else ['barrier', 'prepare'])
  # A bad dataset: process 0 still reaches the barrier (the others would wait there), then every process raises.
  events.clear()

  def bad(*_):
    events.append('prepare')
    raise errors.DataError('a bad label')

  monkeypatch.setattr(builders, '_prepare', bad)
  with pytest.raises(errors.DataError, match='a bad label'):
    builders.prepare(None)
  assert events == (['prepare', 'barrier'] if index == 0 else ['barrier', 'prepare'])


@pytest.mark.parametrize('mode', ['predict', 'export', 'fid', 'translate', 'benchmark'])
def test_a_one_process_mode_in_a_multi_process_launch_is_refused(data_root, monkeypatch, mode):
  """Each process would run the whole mode and write the same files at once: the mode says to run it once."""
  for key, value in {'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234', 'JAX_NUM_PROCESSES': '2',
                     'JAX_PROCESS_ID': '1'}.items():
    monkeypatch.setenv(key, value)
  with pytest.raises(errors.ConfigError, match=f'--mode={mode} runs as one process.*srun --ntasks=1'):
    app.run(cfg(data_root), workdir='unused', mode=mode)


def test_the_warm_start_stage_is_locked_while_it_trains(data_root, tmp_path, live_pid):
  stage = str(tmp_path / 'stage')
  write_lock(stage, pid=live_pid)
  config = cfg(data_root, 'adv', **{'model.init_from': stage, 'model.init_steps': 2, 'train.num_steps': 2})
  with pytest.raises(errors.WorkdirError, match=rf'{re.escape(stage)} is in use by another run \(pid {live_pid}'):
    app.run(config, workdir=str(tmp_path / 'adv'))
  assert not os.path.exists(str(tmp_path / 'adv' / workdirs.LOCK_FILE))  # this run's own lock is released


# ---- item 4: config.json after validation, with a history ------------------------------------------------------


def test_a_failed_launch_leaves_config_json_alone(data_root, tmp_path):
  bad = {'data.gta5_dir': str(tmp_path / 'no_such_gta5')}
  fresh = str(tmp_path / 'fresh')
  with pytest.raises(errors.UserError, match='no_such_gta5'):
    app.run(cfg(data_root, **bad), workdir=fresh)
  assert not os.path.exists(os.path.join(fresh, 'config.json'))
  assert not os.path.exists(os.path.join(fresh, workdirs.HISTORY_FILE))
  used = str(tmp_path / 'used')
  os.makedirs(used)
  with open(os.path.join(used, 'config.json'), 'w') as f:
    f.write('{"the": "config of the run that trained here"}')
  with pytest.raises(errors.UserError):
    app.run(cfg(data_root, **bad), workdir=used)
  assert open(os.path.join(used, 'config.json')).read() == '{"the": "config of the run that trained here"}'
  assert not os.path.exists(os.path.join(used, workdirs.HISTORY_FILE))
  assert not os.path.exists(os.path.join(used, workdirs.LOCK_FILE))


def test_config_json_is_the_latest_launch_and_the_history_keeps_each(kept_run):
  history = [json.loads(line) for line in open(os.path.join(kept_run, workdirs.HISTORY_FILE))]
  assert len(history) == 1 and history[0]['start_step'] == 0 and history[0]['time']
  assert history[0]['config']['train']['num_steps'] == 4
  assert json.load(open(os.path.join(kept_run, 'config.json'))) == history[0]['config']
  assert not os.path.exists(os.path.join(kept_run, workdirs.LOCK_FILE))  # released at the end


# ---- item 9: evaluation batch size checked at the start ---------------------------------------------------------


def test_eval_batch_size_not_divisible_by_the_devices_fails_before_training(data_root, tmp_path):
  workdir = str(tmp_path / 'eval_batch')
  config = cfg(data_root, **{'num_devices': 2, 'train.batch_size': 2, 'data.eval_batch_size': 3})
  with pytest.raises(ValueError, match=r'data.eval_batch_size=3 is not divisible by the 2 devices.*'
                                       r'--config.num_devices=N') as info:
    app.run(config, workdir=workdir)
  assert isinstance(info.value, errors.UserError)
  for name in ('checkpoints', 'metrics.jsonl', 'config.json', workdirs.LOCK_FILE):
    assert not os.path.exists(os.path.join(workdir, name)), name


# ---- item 10: a stop by signal saves, then raises Interrupted -----------------------------------------------------


def test_sigterm_saves_raises_interrupted_and_the_run_resumes_bit_for_bit(kept_run, data_root, tmp_path,
                                                                         monkeypatch):
  workdir = str(tmp_path / 'killed')
  real_scalars = trainer.MetricWriter.scalars

  def scalars_then_sigterm(self, step, values):
    real_scalars(self, step, values)
    if step == 2 and 'loss' in values:
      os.kill(os.getpid(), signal.SIGTERM)  # as a job scheduler would, during step 2

  monkeypatch.setattr(trainer.MetricWriter, 'scalars', scalars_then_sigterm)
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(errors.Interrupted, match=r'SIGTERM at step 2.*run the same command again') as info:
    app.run(cfg(data_root, **{'train.num_steps': 4}), workdir=workdir)
  assert info.value.exit_code == 128 + signal.SIGTERM and info.value.signum == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) == before
  assert last_steps(workdir) == [2] and not os.path.exists(os.path.join(workdir, 'eval.json'))
  assert not os.path.exists(os.path.join(workdir, workdirs.LOCK_FILE))
  monkeypatch.setattr(trainer.MetricWriter, 'scalars', real_scalars)
  app.run(cfg(data_root, **{'train.num_steps': 4}), workdir=workdir)
  # kept_run is the same run never stopped (its checkpoint schedule changes no number).
  assert_trees_equal(restore_params(kept_run), restore_params(workdir))
  assert read_eval(kept_run) == read_eval(workdir)


def test_a_stopped_warm_start_stage_raises_interrupted_with_the_way_on(data_root, tmp_path, monkeypatch):
  def stopped(config, workdir):
    raise errors.Interrupted('Stopped by SIGINT at step 1; run the same command again to resume.', signal.SIGINT)

  monkeypatch.setattr(trainer, 'train_and_evaluate', stopped)
  stage = str(tmp_path / 'stage')
  config = cfg(data_root, 'adv', **{'model.init_from': stage, 'model.init_steps': 3})
  with pytest.raises(errors.Interrupted, match=r'Stage 1 .*stage.* stopped before its end.*again') as info:
    trainer._ensure_source_stage(config, str(tmp_path / 'adv'))  # pylint: disable=protected-access
  assert info.value.exit_code == 128 + signal.SIGINT
