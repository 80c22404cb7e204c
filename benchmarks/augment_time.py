"""Time of the augmentation alone: one jitted, vmapped call of a preset on a random uint8-range batch.

  python benchmarks/augment_time.py [H W B]     # default 128 256 4; times the `light` and `strong` presets

Mean of 50 calls after compilation, each with its own key; compare with a train step from step_time.py.
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rtda_jax import augment  # noqa: E402

TIMED_CALLS = 50


def main(argv: list[str]) -> None:
  h, w, batch = (int(a) for a in argv) if argv else (128, 256, 4)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(0, 255, (batch, h, w, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 19, (batch, h, w)), jnp.int32)
  for name in ('light', 'strong'):
    fn = jax.jit(augment.batched(augment.build(name)))
    jax.block_until_ready(fn(jax.random.PRNGKey(0), images, labels))
    start = time.perf_counter()
    for i in range(TIMED_CALLS):
      out = fn(jax.random.PRNGKey(i), images, labels)
    jax.block_until_ready(out)
    seconds = (time.perf_counter() - start) / TIMED_CALLS
    print(f'{name}: {1000 * seconds:.1f} ms per batch of {batch} at {h}x{w}, {batch / seconds:.0f} images/s')


if __name__ == '__main__':
  main(sys.argv[1:])
