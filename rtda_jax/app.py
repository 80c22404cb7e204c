"""Mode dispatch: what main.py calls. Imports are per mode so `--mode=prepare` needs no model code."""

from __future__ import annotations

import os

import ml_collections
from absl import logging

MODES = ('train', 'evaluate', 'benchmark', 'prepare', 'pseudolabel')


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


def run(config: ml_collections.ConfigDict, workdir: str | None = None, mode: str = 'train') -> dict | None:
  """Runs one mode of the command line. Returns what the mode produced (for tests and notebooks)."""
  if mode not in MODES:
    raise ValueError(f'Unknown --mode={mode!r}; choose one of {MODES}.')
  workdir = workdir or default_workdir(config)
  enable_compilation_cache(config)
  logging.info('mode=%s workdir=%s config=%s', mode, workdir, config.name)
  if mode == 'prepare':
    from rtda_jax import evaluate  # the protocol only: no model code is imported
    from rtda_jax.data import builders
    return builders.prepare(config.data, raw_splits=evaluate.raw_splits(config))
  if mode == 'train':
    from rtda_jax import trainer
    return trainer.train_and_evaluate(config, workdir)
  if mode == 'evaluate':
    from rtda_jax import evaluate
    return evaluate.evaluate_workdir(config, workdir)
  if mode == 'benchmark':
    from rtda_jax import benchmark
    return benchmark.run(config, workdir)
  if mode == 'pseudolabel':
    from rtda_jax import selftrain
    return selftrain.run(config, workdir)
  raise AssertionError(mode)
