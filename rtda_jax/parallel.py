"""Device mesh and shardings: data parallelism with `jax.jit` over a `Mesh`, on one or several processes.

The batch is sharded on the `data` axis, parameters and optimiser states are replicated. BatchNorm statistics are
computed over the global batch (XLA inserts the all-reduce), as with synchronised BN. A multi-process run calls
`jax.distributed.initialize` once (`initialize_distributed`): from `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID` (and `JAX_LOCAL_DEVICE_IDS`) when they are set, else from what SLURM / Open MPI / a TPU pod
describe; each process then feeds its own slice of every global batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rtda_jax import errors

DATA_AXIS = 'data'

# A manual launch: every process gets these three (JAX_LOCAL_DEVICE_IDS, comma-separated, is optional).
MANUAL_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')
LOCAL_DEVICE_IDS_ENV = 'JAX_LOCAL_DEVICE_IDS'
_initialized = False


def distributed_args(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
  """The keyword arguments of `jax.distributed.initialize` a launch's environment asks for, or None for a
  single-process run. {} means JAX's own cluster detection (SLURM with more than one task, Open MPI with more than
  one rank, a TPU pod). ConfigError when the manual variables are set only in part or are not numbers."""
  env = os.environ if environ is None else environ
  manual = {k: env.get(k, '') for k in MANUAL_ENV}
  given = [k for k, v in manual.items() if v]
  if given:
    missing = [k for k in MANUAL_ENV if k not in given]
    if missing:
      raise errors.ConfigError(
          f'A manual multi-process launch needs {", ".join(MANUAL_ENV)} in every process; {", ".join(given)} '
          f'{"is" if len(given) == 1 else "are"} set but {", ".join(missing)} {"is" if len(missing) == 1 else "are"} '
          f'not. Set all three (e.g. JAX_COORDINATOR_ADDRESS=host0:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0), or '
          'none of them for a single process or a SLURM / Open MPI launch.')
    try:
      num_processes, process_id = int(manual['JAX_NUM_PROCESSES']), int(manual['JAX_PROCESS_ID'])
      ids = env.get(LOCAL_DEVICE_IDS_ENV, '')
      local_device_ids = [int(i) for i in ids.split(',')] if ids.strip() else None
    except ValueError:
      raise errors.ConfigError(
          f'JAX_NUM_PROCESSES={manual["JAX_NUM_PROCESSES"]!r}, JAX_PROCESS_ID={manual["JAX_PROCESS_ID"]!r} and '
          f'{LOCAL_DEVICE_IDS_ENV}={env.get(LOCAL_DEVICE_IDS_ENV, "")!r} must be integers (the last one a '
          'comma-separated list such as 0,1,2,3).') from None
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise errors.ConfigError(f'JAX_PROCESS_ID={process_id} must be in [0, JAX_NUM_PROCESSES={num_processes}).')
    address = manual['JAX_COORDINATOR_ADDRESS']
    if ':' not in address:
      raise errors.ConfigError(f'JAX_COORDINATOR_ADDRESS={address!r} must be host:port (process 0\'s host and a '
                               'free port that every process can reach).')
    if num_processes == 1:
      return None
    # 'deactivate': no cluster detection under a manual launch (inside a SLURM step it would otherwise give each
    # process only the device of its SLURM_LOCALID when JAX_LOCAL_DEVICE_IDS is unset).
    return {'coordinator_address': address, 'num_processes': num_processes, 'process_id': process_id,
            'local_device_ids': local_device_ids, 'cluster_detection_method': 'deactivate'}
  # SLURM: inside an `srun` step of several tasks (a batch script's own shell is one process even with --ntasks>1).
  # The step's own task count first: an interactive allocation's shell is a step of one task under SLURM_NTASKS>1.
  tasks = env.get('SLURM_STEP_NUM_TASKS') or env.get('SLURM_NTASKS') or '1'
  if env.get('SLURM_STEP_NODELIST') and env.get('SLURM_PROCID') and int(tasks) > 1:
    return {}
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1') or 1) > 1:
    return {}
  if env.get('TPU_WORKER_HOSTNAMES') and ',' in env['TPU_WORKER_HOSTNAMES']:
    return {}
  return None


def initialize_distributed() -> None:
  """Calls `jax.distributed.initialize` once when the environment describes a multi-process launch (see
  `distributed_args`); before it, CPU collectives are set to gloo unless the user chose others. Call it before
  anything touches a JAX device."""
  global _initialized
  if _initialized:
    return
  args = distributed_args()
  if args is not None:
    if jax.config.jax_cpu_collectives_implementation is None:  # JAX 0.10 defaults to gloo; older ones to none
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(**args)
  _initialized = True


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh, axis `data`, over every device of every process (or the first `num_devices`, single-process)."""
  devices = jax.devices()
  if num_devices and num_devices != len(devices):
    if num_devices > len(devices) or jax.process_count() > 1:
      raise errors.ConfigError(
          f'config.num_devices={num_devices}, but {len(devices)} devices are visible ({jax.process_count()} '
          f'process(es)); use 0 for all of them{"" if jax.process_count() > 1 else f" or at most {len(devices)}"}.')
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
    raise errors.ConfigError(
        f'config.{field}={global_batch_size} is not divisible by the {num_devices} devices in use; choose a '
        f'multiple of {num_devices} (or use fewer devices with --config.num_devices=N).')
  return global_batch_size // jax.process_count()


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Per-process numpy arrays -> global jax Arrays sharded on `data` (a pytree of arrays, batch axis first)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Puts a pytree (host arrays, or arrays on this process's devices) on every device of the mesh.

  On a mesh of several processes every process holds the same values (the same initialisation, the same restored
  checkpoint); an array committed to a local device is fed from the host, since moving it to another process's
  devices would be a cross-host transfer, which CPU backends do not have."""
  sharding = replicated(mesh)

  def put(x: Any) -> Any:
    if isinstance(x, jax.Array) and x.is_fully_addressable and not sharding.is_fully_addressable:
      x = np.asarray(x)
    return jax.device_put(x, sharding)

  return jax.tree.map(put, tree)


def process_sum(x: Any) -> np.ndarray:
  """The sum over every process of each process's `x` (a host number or array of one shape in all); `x` itself on
  one process. Every process must call it (a collective)."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x)).sum(axis=0).astype(x.dtype)


def say(*args: Any, **kwargs: Any) -> None:
  """print() on the first process only: a multi-process run prints each line once."""
  if jax.process_index() == 0:
    print(*args, **kwargs)


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
