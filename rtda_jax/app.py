"""Mode dispatch: what main.py calls. Imports are per mode so `--mode=prepare` needs no model code."""

from __future__ import annotations

import importlib
import os

import ml_collections
from absl import logging

from rtda_jax import errors

MODES = ('train', 'evaluate', 'benchmark', 'prepare', 'pseudolabel', 'translate', 'predict', 'export', 'fid')
# mode -> (module of rtda_jax, its function(config, workdir)); imported when the mode runs ('prepare' is run's own).
_MODE_FUNCTIONS = {
    'train': ('trainer', 'train_and_evaluate'), 'evaluate': ('evaluate', 'evaluate_workdir'),
    'benchmark': ('benchmark', 'run'), 'pseudolabel': ('selftrain', 'run'), 'translate': ('translate_data', 'run'),
    'predict': ('predict', 'run'), 'export': ('export', 'run'), 'fid': ('fid', 'run'),
}


def default_workdir(config: ml_collections.ConfigDict) -> str:
  return os.path.join('runs', config.name)


def enable_compilation_cache(config: ml_collections.ConfigDict) -> None:
  """Persistent XLA compilation cache: a second run of the same program skips compilation."""
  cache = config.get('jax_cache_dir', '')
  if cache == 'none':
    return
  import jax
  jax.config.update('jax_compilation_cache_dir', cache or os.path.join(config.data.root, 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


# [H, W] fields: two positive integers each. Any other tuple field named `size` / `*_size` is () (its default) or
# an [H, W] pair too; `benchmark.resolutions` holds [H, W] pairs.
SIZE_FIELDS = ('data.gta5_size', 'data.cityscapes_size', 'data.source_train_size', 'data.target_train_size',
               'data.synthetic.gta5_size', 'data.synthetic.cityscapes_size', 'eval.input_size')
PAIR_FIELDS = ('adv.disc_betas', 'benchmark.adv.disc_betas')  # Adam's (beta1, beta2)
# Modes that join a multi-process launch: they split their work between the processes (`prepare` builds the
# datasets on process 0 first, then the others find them built). The other modes run as one process.
_DISTRIBUTED_MODES = ('train', 'evaluate', 'pseudolabel', 'prepare')


def _fields(config: ml_collections.ConfigDict, prefix: str = '') -> dict[str, object]:
  """Every leaf of a config by its dotted path."""
  out = {}
  for key, value in config.items():
    path = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_fields(value, path + '.'))
    else:
      out[path] = value
  return out


def _is_hw(value: object) -> bool:
  return (isinstance(value, (tuple, list)) and len(value) == 2 and
          all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _hw_error(path: str, value: object, what: str = '[H, W]: 2 positive integers') -> errors.ConfigError:
  is_tuple = isinstance(value, (tuple, list))
  has = f'it has {len(value)} value(s)' if is_tuple else 'it is not a tuple'
  example = "'(64,128)'" if 'betas' not in path else "'(0.9,0.99)'"
  return errors.ConfigError(f'config.{path}={tuple(value) if is_tuple else value!r} must be {what}; {has}. Give the '
                            f'whole tuple, e.g. --config.{path}={example}.')


def check_config(config: ml_collections.ConfigDict) -> None:
  """The checks of config values that need no data or devices, before any mode starts: the [H, W] fields are two
  positive integers, Adam's betas two numbers. ConfigError naming the field and the expected length."""
  fields = _fields(config)
  for path, value in fields.items():
    leaf = path.rsplit('.', 1)[-1]
    required = path in SIZE_FIELDS
    if required or ((leaf == 'size' or leaf.endswith('_size')) and isinstance(value, (tuple, list)) and value):
      if not _is_hw(value):
        raise _hw_error(path, value)
  for path in PAIR_FIELDS:
    value = fields.get(path)
    if value is not None and not (isinstance(value, (tuple, list)) and len(value) == 2 and
                                  all(isinstance(v, (int, float)) for v in value)):
      raise _hw_error(path, value, '(beta1, beta2): 2 numbers')
  for i, value in enumerate(fields.get('benchmark.resolutions') or ()):
    if not _is_hw(value):
      raise errors.ConfigError(f'config.benchmark.resolutions[{i}]={value!r} must be [H, W] (2 positive integers), '
                               "e.g. --config.benchmark.resolutions='((512,1024),(256,512))'.")


def run(config: ml_collections.ConfigDict, workdir: str | None = None, mode: str = 'train') -> dict | None:
  """Runs one mode of the command line. Returns what the mode produced (for tests and notebooks).

  The config is checked first (check_config); the modes that compute join a multi-process launch the environment
  describes (parallel.initialize_distributed) before anything touches a device."""
  if mode not in MODES:
    raise errors.ConfigError(f'Unknown --mode={mode!r}; choose one of {MODES}.')
  check_config(config)
  workdir = workdir or default_workdir(config)
  from rtda_jax import parallel  # pylint: disable=g-import-not-at-top
  if mode in _DISTRIBUTED_MODES:
    parallel.initialize_distributed()
  elif parallel.distributed_args() is not None:  # each process would do all of it, writing the same files at once
    raise errors.ConfigError(
        f'--mode={mode} runs as one process, and this is a launch of several (JAX_NUM_PROCESSES, srun with more '
        f"than one task, mpirun): run it once, e.g. 'srun --ntasks=1 python main.py --mode={mode} ...'. It uses "
        'every local device of its host.')
  enable_compilation_cache(config)
  logging.info('mode=%s workdir=%s config=%s', mode, workdir, config.name)
  if mode == 'prepare':
    from rtda_jax import evaluate  # the protocol only: no model code is imported
    from rtda_jax.data import builders
    return builders.prepare(config.data, raw_splits=evaluate.raw_splits(config))
  module, function = _MODE_FUNCTIONS[mode]
  return getattr(importlib.import_module(f'rtda_jax.{module}'), function)(config, workdir)
