"""Device mesh and shardings: data parallelism with `jax.jit` over a `Mesh`.

The batch is sharded on the `data` axis, parameters and optimiser states are replicated. BatchNorm statistics are
computed over the global batch (XLA inserts the all-reduce), as with synchronised BN. Multi-host runs call
`jax.distributed.initialize()` when the environment asks for it; each process feeds its own slice of the batch.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'

# Environment variables that announce a multi-process launch (SLURM, Open MPI, TPU pods, or explicit JAX ones).
_MULTI_HOST_ENV = ('JAX_COORDINATOR_ADDRESS', 'COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE',
                   'TPU_WORKER_HOSTNAMES')
_initialized = False


def initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` once when the environment describes a multi-process launch."""
  global _initialized
  if _initialized:
    return
  wants = [k for k in _MULTI_HOST_ENV if os.environ.get(k)]
  if wants and not (os.environ.get('SLURM_NTASKS') == '1' or os.environ.get('OMPI_COMM_WORLD_SIZE') == '1'):
    jax.distributed.initialize()
  _initialized = True


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh, axis `data`, over every device of every process (or the first `num_devices`, single-host)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices) or jax.process_count() > 1:
      raise ValueError(f'config.num_devices={num_devices}, but {len(devices)} devices are visible '
                       f'({jax.process_count()} processes); use 0 for all of them.')
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, the rest whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = 'train.batch_size') -> int:
  """Returns the per-process batch size, or raises if the global batch does not split evenly."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ValueError(f'config.{field}={global_batch_size} is not divisible by the {num_devices} devices in use; '
                     f'choose a multiple of {num_devices} (or limit the devices with CUDA_VISIBLE_DEVICES).')
  return global_batch_size // jax.process_count()


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Per-process numpy arrays -> global jax Arrays sharded on `data` (a pytree of arrays, batch axis first)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Puts a host pytree on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded array, in order (the whole array on a single process)."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:  # replicated copies of one block appear once
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)
