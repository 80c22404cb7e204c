"""Test session set-up: 8 fake CPU devices (for the data-parallel tests), XLA's backend optimisation off
(tests/xla_flags.py: the suite is compile-bound) and a persistent compilation cache.

All must be configured before JAX initialises its backend, hence here. Flags already in XLA_FLAGS win.
"""

import os

from tests import xla_flags

os.environ['XLA_FLAGS'] = xla_flags.with_test_flags(os.environ.get('XLA_FLAGS', ''))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402

# Compiled executables are reused across tests and test runs (identical programs compile once). One folder per
# pytest-xdist worker: JAX writes a cache entry in place (no temporary file and rename), so a worker could read
# another's half-written entry.
_CACHE = os.environ.get('RTDA_TEST_JAX_CACHE', os.path.join(os.path.dirname(__file__), '..', '.jax_cache'))
jax.config.update('jax_compilation_cache_dir', os.path.join(_CACHE, os.environ.get('PYTEST_XDIST_WORKER', 'main')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


import pytest  # noqa: E402


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  """A tiny embedded benchmark (tests/trainer_utils.tiny_config), generated and built once per test module."""
  from rtda_jax import app
  from tests.trainer_utils import tiny_config
  root = str(tmp_path_factory.mktemp('data'))
  app.run(tiny_config(root), mode='prepare')
  return root


MAX_WORKERS = 4  # each worker fakes 8 devices and compiles its own programs: more workers mostly add memory


def pytest_xdist_auto_num_workers(config):
  """`-n auto` (pytest.ini): one worker per CPU this process may run on, at most MAX_WORKERS.

  The suite is compile-bound and XLA compiles one program on one thread, so on 2 cores two workers (each taking
  whole test files, `--dist loadfile`, so module fixtures are built once) keep both busy (RESULTS.md, session 8:
  7 min 05 s for `.ci/run` with two workers, against 18 min of serial pytest on stop 21's CI machine). The affinity
  mask, not the machine's core count: under `taskset -c 0` there is one worker.
  """
  del config
  return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
