"""The command line's failures: a user error is one line `error: ...` and exit 2 (the traceback with --verbosity=1),
a stop by a signal exits 128 + N; unknown presets list the config's own; tuple fields are checked and the last
whole-tuple value wins. Each case fails before any training, in seconds."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import textwrap

import pytest

from configs import common
from rtda_jax import app, errors
from tests import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs'))
                 if f.endswith('.py') and f not in ('__init__.py', 'common.py'))


def main_py(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
  env = {**os.environ, 'XLA_FLAGS': xla_flags.subprocess_flags(), 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
  """Exit 2 and a short stderr that ends with `error: <message>` holding every fragment; returns the message."""
  assert proc.returncode == errors.USER_ERROR_EXIT, (proc.returncode, proc.stderr[-3000:])
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert 'Traceback' not in proc.stderr and len(lines) <= 4, proc.stderr[-3000:]
  message = next(l for l in lines if l.startswith('error: '))
  for fragment in fragments:
    assert fragment in proc.stderr, (fragment, proc.stderr)
  return message


# ---- presets -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', CONFIGS)
def test_an_unknown_preset_lists_the_configs_own_presets(name):
  module = importlib.import_module(f'configs.{name}')
  own = {p for k, v in vars(module).items() if k.endswith('_PRESETS') and isinstance(v, tuple) for p in v}
  if 'common.apply_presets(' in inspect.getsource(module):  # the shared presets too
    own |= set(common.MODEL_PRESETS + common.SCALE_PRESETS)
  with pytest.raises(errors.ConfigError) as err:
    module.get_config('no_such_preset')
  message = str(err.value)
  assert "'no_such_preset'" in message and f"config '{name}'" in message
  listed = message.split('its presets: ')[1].split(' (')[0].rstrip('.').split(', ')
  assert own <= set(listed), (own, listed)
  for preset in listed:  # every preset the message lists is one the config knows (some only combined: cycada)
    try:
      module.get_config(preset)
    except errors.ConfigError as e:
      assert 'Unknown preset' not in str(e), (preset, str(e))


def test_a_misspelt_preset_gets_a_suggestion():
  from configs import adv, fda  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.ConfigError, match=r"'multilvel' for config 'adv' \(did you mean 'multilevel'\?\)"):
    adv.get_config('multilvel')
  with pytest.raises(errors.ConfigError, match=r"'b01' for config 'fda' \(did you mean 'b001'\?\)"):
    fda.get_config('b01')


def test_unknown_preset_on_the_command_line_is_one_line_and_exit_2():
  message = assert_user_error(main_py('--config=configs/adv.py:multilvel'), 'multilevel', 'feature')
  assert message.startswith("error: Unknown preset 'multilvel' for config 'adv'")
  verbose = main_py('--config=configs/fda.py:b01', '--verbosity=1')
  assert verbose.returncode == 2 and 'Traceback' in verbose.stderr
  assert verbose.stderr.strip().splitlines()[-1].startswith("error: Unknown preset 'b01' for config 'fda'")


# ---- tuple fields ---------------------------------------------------------------------------------------------------


def test_every_size_field_is_checked(tmp_path):
  from tests.trainer_utils import tiny_config  # pylint: disable=g-import-not-at-top
  for field in app.SIZE_FIELDS:
    for bad in ((64,), (64, 64, 3), (0, 64), (64.0, 64)):
      config = tiny_config(str(tmp_path))
      parent, _, leaf = field.rpartition('.')
      node = config
      for part in parent.split('.'):
        node = node[part]
      node[leaf] = bad
      with pytest.raises(errors.ConfigError, match=rf'config\.{field}=.*must be \[H, W\]: 2 positive integers'):
        app.run(config, mode='prepare')


def test_a_short_tuple_names_the_field_and_the_length():
  assert_user_error(main_py('--config=configs/oracle.py', '--config.data.gta5_size=64', '--mode=prepare'),
                    'config.data.gta5_size=(64,)', '[H, W]: 2 positive integers', 'it has 1 value(s)')


def test_a_tuple_given_twice_takes_the_last_value(tmp_path):
  # Without de-duplication ml_collections concatenates: (64, 64, 32, 32, 1).
  assert_user_error(main_py('--config=configs/oracle.py', '--config.data.gta5_size=(64,64)',
                            '--config.data.gta5_size', '(32,32,1)', '--mode=prepare'),
                    'config.data.gta5_size=(32, 32, 1) must be')
  # A bad first value replaced by a good one: the run gets as far as the data (a missing folder here).
  missing = str(tmp_path / 'no_gta5')
  assert_user_error(main_py('--config=configs/oracle.py', '--config.data.gta5_size=(1,2,3)',
                            '--config.data.gta5_size=(32,64)', f'--config.data.gta5_dir={missing}',
                            f'--config.data.cityscapes_dir={tmp_path / "no_cs"}', f'--config.data.root={tmp_path}',
                            '--mode=prepare'), missing)


def test_last_tuple_override_wins_keeps_everything_else():
  sys.path.insert(0, ROOT)
  import main  # pylint: disable=g-import-not-at-top
  argv = ['main.py', '--config=c.py', '--config.a.size=(1,2)', '--config.b=3', '--config.a.size', '[3, 4]',
          '--config.eval.scales=0.5', '--config.eval.scales=1.0', '--config.b=5', '--mode=train']
  assert main.last_tuple_override_wins(argv) == [
      'main.py', '--config=c.py', '--config.b=3', '--config.a.size', '[3, 4]', '--config.eval.scales=0.5',
      '--config.eval.scales=1.0', '--config.b=5', '--mode=train']  # scalars: ml_collections' element syntax
  boolean = ['main.py', '--config.a.size=(1,2)', '--config.model.allow_random_init', '--config.a.size=(5,6)']
  assert main.last_tuple_override_wins(boolean) == boolean[:1] + boolean[2:]  # a flag without a value


# ---- other user errors ---------------------------------------------------------------------------------------------


def test_a_missing_dataset_folder_is_one_line_naming_it(tmp_path):
  missing = str(tmp_path / 'GTA5')
  assert_user_error(main_py('--config=configs/source_only.py', f'--config.data.gta5_dir={missing}',
                            f'--config.data.cityscapes_dir={tmp_path / "cityscapes"}', f'--config.data.root={tmp_path}',
                            '--mode=prepare'), f"GTA5 folder '{missing}' does not exist", '--config.data.gta5_dir')


def test_an_unknown_field_names_it_with_a_suggestion():
  assert_user_error(main_py('--config=configs/oracle.py', '--config.train.num_step=3', '--mode=prepare'),
                    '--config.train.num_step names no field', 'num_steps')


def test_a_config_file_that_does_not_exist_is_a_user_error():
  assert_user_error(main_py('--config=configs/no_such_config.py'), 'configs/no_such_config.py')


_RAISE = '''
import sys
sys.path.insert(0, {root!r})
import main
from absl import app
from rtda_jax import errors

def run(config, workdir=None, mode='train'):
  raise {error}

main.rtda_app.run = run
sys.argv = ['main.py', '--config=configs/oracle.py', '--workdir=/nonexistent'] + sys.argv[1:]
app.run(main.main, flags_parser=main.parse_flags)
'''


@pytest.mark.parametrize('error, code, line', [
    ("errors.DataError('Label x.png holds ids 200')", 2, 'error: Label x.png holds ids 200'),
    ("errors.WorkdirError('runs/x is held by pid 7 on host h')", 2, 'error: runs/x is held by pid 7 on host h'),
    ("errors.Interrupted('Stopped by signal 15 at step 3; checkpoint saved.', 15)", 143,
     'Stopped by signal 15 at step 3; checkpoint saved.'),
    ("errors.Interrupted('Stopped by signal 2 at step 3; checkpoint saved.', 2)", 130,
     'Stopped by signal 2 at step 3; checkpoint saved.'),
])
def test_run_time_errors_exit_with_their_code(error, code, line):
  script = textwrap.dedent(_RAISE.format(root=ROOT, error=error))
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == code, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [line]


def test_a_bug_still_shows_its_traceback():
  script = textwrap.dedent(_RAISE.format(root=ROOT, error="KeyError('a bug')"))
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 1 and 'Traceback' in proc.stderr and "KeyError: 'a bug'" in proc.stderr
