"""Seconds per jitted, donated train step of a config's method on random uint8 data (after compilation).

  python benchmarks/step_time.py adv '' 128 256 8 [field=value ...]   # config, preset, H, W, batch per domain

Quicker than `--mode=benchmark` for comparing methods at the demo size; both time the compiled step only.
"""

import importlib
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rtda_jax import methods  # noqa: E402
from tests.trainer_utils import get_field, override, random_batch  # noqa: E402

TIMED_STEPS = 10


def main(argv: list[str]) -> None:
  name, preset, h, w, batch = argv[0], argv[1] or None, int(argv[2]), int(argv[3]), int(argv[4])
  config = importlib.import_module(f'configs.{name}').get_config(preset)
  override(config, {k: type(get_field(config, k))(x) for k, x in (a.split('=', 1) for a in argv[5:])})
  method = methods.get_method(config)
  state = method.init(jax.random.PRNGKey(0), {'source': (h, w), 'target': (h, w)})
  data = jax.tree.map(jnp.asarray, random_batch(batch, (h, w), domains=method.domains))
  step = jax.jit(method.train_step, donate_argnums=0)
  start = time.perf_counter()
  state, metrics = step(state, data)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(TIMED_STEPS):
    state, metrics = step(state, data)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - start
  print(f'{name}:{preset or ""} {h}x{w} batch {batch}: compile+first {compile_s:.1f} s, '
        f'step {elapsed / TIMED_STEPS:.3f} s, {batch * len(method.domains) * TIMED_STEPS / elapsed:.1f} images/s '
        f'(every domain counted), {TIMED_STEPS} steps timed')


if __name__ == '__main__':
  main(sys.argv[1:])
