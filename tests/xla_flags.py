"""The XLA flags the tests run under (no JAX import: conftest sets them before JAX starts).

The suite is compile-bound (tiny shapes, a few steps): without LLVM's optimisation passes XLA compiles the CPU
programs about twice as fast (benchmarks/RESULTS.md, "Session 6"). Float semantics stay IEEE (no fast-math at any
level); what can change is the order of some sums, as between CPUs, which the tolerances derived from float32
summation bounds cover (trainer_utils.assert_same_up_to_summation_order); bit-for-bit tests compare two runs under
the same flags.
"""

from __future__ import annotations

OPTIMISATION = '--xla_backend_optimization_level=0'
DEVICES = '--xla_force_host_platform_device_count'


def with_test_flags(flags: str, num_devices: int = 8) -> str:
  """`flags` plus the test flags it does not set itself (8 fake CPU devices for the data-parallel tests by default)."""
  given = {f.split('=')[0] for f in flags.split()}
  wanted = {DEVICES: f'{DEVICES}={num_devices}', OPTIMISATION.split('=')[0]: OPTIMISATION}
  return ' '.join([flags] + [f for k, f in wanted.items() if k not in given]).strip()


def subprocess_flags(num_devices: int = 1) -> str:
  """XLA_FLAGS for a Python subprocess of a test: `num_devices` CPU devices, the tests' optimisation level."""
  return with_test_flags('', num_devices)
