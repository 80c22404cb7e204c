"""`--mode=benchmark`: parameters, XLA-counted FLOPs, compile time, latency, throughput and train-step time.

For each model, resolution and dtype: the eval-mode forward pass (images float32 [B, H, W, 3] -> logits) is compiled
once per batch size with `jax.jit(f).lower(...).compile()`; FLOPs come from the compiled executable's
`cost_analysis()` (XLA counts a multiply-add as 2 FLOPs; papers that quote "FLOPs" often mean multiply-adds). Only
the compiled executable is timed: inputs already on the device, warm-up calls first, every call ended by
`block_until_ready`, compile and tracing excluded. One training step of the supervised and of the adversarial
method (built by `methods.get_method`, state donated as in the trainer) is timed the same way. Weights are
random (speed does not depend on them). Results go to `<workdir>/complexity.json` and a Markdown table is printed.
`parameter_overview` there is the clu.parameter_overview table of every network of `config.method` (the table the
trainer prints when it starts); each train-step entry names its method's networks and their parameter counts.

Defaults when `config.benchmark` leaves a field empty: on GPU BiSeNet and DeepLab-v2 at 512x1024, float32 and
bfloat16, batch sizes 1, 8, 16, 200 timed forward calls and 30 timed train steps; on CPU (reduced, to finish in a
few minutes on 2 cores) only `config.model.name` at 256x512, float32, batch sizes 1 and 4, 10 timed calls and 3 train
steps. Train steps use `config.train.batch_size` images per domain (on CPU at most 2), halved until it fits where
memory runs out. Optional fields read with `.get`: `benchmark.models`, `benchmark.methods` (() = forward only),
`benchmark.train_batch_size`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import platform as platform_lib
import sys
import time
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np

from rtda_jax import files, models, trainer

# Dense peak TFLOP/s per device kind (substring of `device_kind`): (bfloat16, TF32). H100/H200 SXM.
PEAK_TFLOPS = {'H100': (989.0, 494.7), 'H200': (989.0, 494.7), 'A100': (312.0, 156.0)}
TRAIN_METHODS = ('supervised', 'adversarial')


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one benchmark run measures (the config's fields, or the device defaults where those are empty)."""
  models: tuple[str, ...]
  resolutions: tuple[tuple[int, int], ...]
  dtypes: tuple[str, ...]
  batch_sizes: tuple[int, ...]
  methods: tuple[str, ...]
  train_batch_size: int
  num_runs: int
  train_runs: int
  warmup_runs: int
  reduced_cpu_defaults: bool


def resolve_settings(config: ml_collections.ConfigDict, platform: str) -> Settings:
  """`config.benchmark` with its empty fields replaced by the defaults of `platform` ('gpu', 'cpu', 'tpu')."""
  bench = config.benchmark
  accel = platform != 'cpu'
  default_models = ('bisenet', 'deeplabv2') if accel else (config.model.name,)
  if accel and config.model.name not in default_models:
    default_models = (config.model.name,) + default_models
  num_runs = int(bench.get('num_runs') or 0)
  resolutions = tuple(tuple(int(v) for v in r) for r in bench.get('resolutions') or ())
  reduced = not accel and not (resolutions and bench.get('dtypes') and bench.get('batch_sizes') and num_runs)
  return Settings(
      models=tuple(bench.get('models') or default_models),
      resolutions=resolutions or (((512, 1024),) if accel else ((256, 512),)),
      dtypes=tuple(bench.get('dtypes') or (('float32', 'bfloat16') if accel else ('float32',))),
      batch_sizes=tuple(int(b) for b in bench.get('batch_sizes') or ((1, 8, 16) if accel else (1, 4))),
      methods=tuple(bench.get('methods', TRAIN_METHODS)),
      train_batch_size=int(bench.get('train_batch_size') or 0) or (
          int(config.train.batch_size) if accel else min(2, int(config.train.batch_size))),
      num_runs=num_runs or (200 if accel else 10),
      train_runs=num_runs or (30 if accel else 3),
      warmup_runs=10 if accel else 1,
      reduced_cpu_defaults=reduced)


# ---- measuring --------------------------------------------------------------------------------------------------

def timing_stats(seconds: Sequence[float]) -> dict[str, float]:
  """Milliseconds: mean, p50 (median), p90, min, std, and the number of timed runs."""
  ms = np.asarray(seconds, np.float64) * 1e3
  return {'mean_ms': float(ms.mean()), 'p50_ms': float(np.median(ms)), 'p90_ms': float(np.percentile(ms, 90)),
          'min_ms': float(ms.min()), 'std_ms': float(ms.std()), 'runs': int(ms.size)}


def time_calls(call: Callable[[], Any], num_runs: int, warmup_runs: int) -> list[float]:
  """Seconds of each of `num_runs` calls of `call` (after `warmup_runs` untimed ones), each ended by
  `jax.block_until_ready` on what it returns."""
  for _ in range(warmup_runs):
    jax.block_until_ready(call())
  times = []
  for _ in range(num_runs):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return times


def compile_timed(fn: Callable[..., Any], *args: Any, donate_argnums: tuple[int, ...] = ()
                  ) -> tuple[Any, dict[str, float]]:
  """(compiled executable, {'trace_s', 'compile_s', 'flops'}) of `jax.jit(fn)` on `args`."""
  start = time.perf_counter()
  lowered = jax.jit(fn, donate_argnums=donate_argnums).lower(*args)
  traced = time.perf_counter()
  compiled = lowered.compile()
  done = time.perf_counter()
  return compiled, {'trace_s': traced - start, 'compile_s': done - traced, 'flops': cost_flops(compiled)}


def cost_flops(compiled: Any) -> float | None:
  """FLOPs of a compiled (or lowered) computation from XLA's cost analysis (a dict, or a list of dicts in some
  JAX versions); None where the backend gives none."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # some backends do not implement it
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or analysis.get('flops') is None:
    return None
  return float(analysis['flops'])


def random_tree(shapes: Any, seed: int = 0) -> Any:
  """Arrays shaped like `shapes` (ShapeDtypeStructs of variables or a method state), on the default device.

  Conv kernels ~ N(0, 1/fan_in); BN scale ~ 1 + N(0, 0.1), var ~ U(0.5, 1.5); biases and means ~ N(0, 0.1);
  everything under an optimiser state, and every integer (steps, PRNG keys), zero.
  """
  rng = np.random.default_rng(seed)

  def fill(path: tuple[Any, ...], leaf: Any) -> jax.Array:
    where = jax.tree_util.keystr(path)
    name = getattr(path[-1], 'key', getattr(path[-1], 'name', None)) if path else None
    if not jnp.issubdtype(leaf.dtype, jnp.floating) or 'opt_state' in where:
      return jnp.zeros(leaf.shape, leaf.dtype)
    if name == 'kernel':
      value = rng.normal(0.0, np.sqrt(1.0 / max(1, int(np.prod(leaf.shape[:-1])))), leaf.shape)
    elif name == 'scale':
      value = 1.0 + rng.normal(0.0, 0.1, leaf.shape)
    elif name == 'var':
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      value = rng.normal(0.0, 0.1, leaf.shape)
    return jnp.asarray(value.astype(leaf.dtype))

  return jax.tree_util.tree_map_with_path(fill, shapes)


def model_config(config: ml_collections.ConfigDict, name: str, dtype: str) -> ml_collections.ConfigDict:
  """`config.model` for model `name` in `dtype`, random init (no weight file)."""
  cfg = ml_collections.ConfigDict(config.model.to_dict())
  cfg.name, cfg.dtype, cfg.pretrained = name, dtype, None
  return cfg


def forward_fn(module: flax.linen.Module) -> Callable[[Any, jax.Array], jax.Array]:
  """(variables, images float32 [B, H, W, 3]) -> logits [B, H, W, K]: the eval-mode forward pass."""
  return lambda variables, images: module.apply(variables, images, train=False)['logits']


def random_images(batch: int, resolution: tuple[int, int], seed: int = 0) -> jax.Array:
  """float32 [B, H, W, 3] in 0..255 on the default device."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, 256, (batch, *resolution, 3)).astype(np.float32))


def _rates(stats: dict[str, float], batch: int, flops: float | None, peak: float | None) -> dict[str, Any]:
  """Images/s (from the median and the mean) and achieved TFLOP/s (and fraction of peak) from the median."""
  out = {'images_per_s': batch / (stats['p50_ms'] / 1e3), 'images_per_s_mean': batch / (stats['mean_ms'] / 1e3)}
  if flops:
    out['tflops_per_s'] = flops / (stats['p50_ms'] / 1e3) / 1e12
    if peak:
      out['fraction_of_peak'] = out['tflops_per_s'] / peak
  return out


def _is_out_of_memory(e: Exception) -> bool:
  text = str(e)
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()


def _error(e: Exception) -> dict[str, str]:
  return {'error': f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'[:300]}


def benchmark_forward(module: flax.linen.Module, variables: Any, resolution: tuple[int, int], batch: int,
                      num_runs: int, warmup_runs: int, peak: float | None = None) -> dict[str, Any]:
  """Compile and time the eval forward pass at one batch size."""
  images = random_images(batch, resolution)
  compiled, info = compile_timed(forward_fn(module), variables, images)
  stats = timing_stats(time_calls(lambda: compiled(variables, images), num_runs, warmup_runs))
  flops = info.pop('flops')
  return {'batch_size': batch, **info, 'gflops_per_image': flops / batch / 1e9 if flops else None,
          'step': stats, **_rates(stats, batch, flops, peak)}


def method_config(config: ml_collections.ConfigDict, method: str, model_cfg: ml_collections.ConfigDict
                  ) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` for `method` with `model_cfg`; the adversarial settings `config.benchmark.adv`
  where the config has no `adv` of its own."""
  cfg = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  cfg.method, cfg.model = method, model_cfg
  if method == 'adversarial' and 'adv' not in cfg:
    cfg.adv = cfg.benchmark.adv
  return cfg


def benchmark_train_step(config: ml_collections.ConfigDict, method_name: str, resolution: tuple[int, int],
                         batch: int, num_runs: int, warmup_runs: int, peak: float | None = None) -> dict[str, Any]:
  """Compile and time one `train_step` of a method (state donated), `batch` images per domain at `resolution`."""
  from rtda_jax import methods  # pylint: disable=import-outside-toplevel
  method = methods.get_method(config)
  shapes = {'source': resolution, 'target': resolution}
  state = random_tree(jax.eval_shape(lambda key: method.init(key, shapes), jax.random.PRNGKey(0)))
  rng = np.random.default_rng(1)
  data = {d: {'image': jnp.asarray(rng.integers(0, 256, (batch, *resolution, 3), dtype=np.uint8)),
              'label': jnp.asarray(rng.integers(0, config.model.num_classes, (batch, *resolution), dtype=np.uint8))}
          for d in method.domains}
  networks = {name: o['params'] for name, o in trainer.parameter_overview(state).items()}
  compiled, info = compile_timed(method.train_step, state, data, donate_argnums=(0,))
  holder = [state]

  def step() -> Any:
    holder[0], metrics = compiled(holder[0], data)
    return holder[0], metrics

  stats = timing_stats(time_calls(step, num_runs, warmup_runs))
  flops = info.pop('flops')
  return {'method': method_name, 'batch_size': batch, **info, 'gflops_per_step': flops / 1e9 if flops else None,
          'step': stats, **_rates(stats, batch, flops, peak), 'networks': networks}


def method_parameter_overview(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'method', 'model', 'networks': {network: {'params', 'table'}}} of `config.method` with `config.model` (random
  init, shapes only: jax.eval_shape of the method's init at the training sizes), or {'error'} where the method
  cannot be built without its inputs (e.g. a checkpoint it starts from)."""
  from rtda_jax import methods  # pylint: disable=import-outside-toplevel
  from rtda_jax.methods import base  # pylint: disable=import-outside-toplevel
  out: dict[str, Any] = {'method': config.method, 'model': config.model.name}
  try:
    model_cfg = model_config(config, config.model.name, config.model.get('dtype', 'float32'))
    cfg = method_config(config, config.method, model_cfg)
    method = methods.get_method(cfg)
    shapes = base.train_shapes(cfg)
    state = jax.eval_shape(lambda key: method.init(key, shapes), jax.random.PRNGKey(0))
    out['networks'] = trainer.parameter_overview(state)
  except Exception as e:  # pylint: disable=broad-except  # record it; the measurements go on
    out.update(_error(e))
  return out


def benchmark_entry(config: ml_collections.ConfigDict, name: str, resolution: tuple[int, int], dtype: str,
                    settings: Settings, peak: float | None = None) -> dict[str, Any]:
  """Every measurement of one (model, resolution, dtype)."""
  model_cfg = model_config(config, name, dtype)
  module = models.get_model(model_cfg)
  shapes = models.init_shapes(module, (1, *resolution, 3), train=False)
  entry: dict[str, Any] = {'model': name, 'resolution': list(resolution), 'dtype': dtype,
                           'params': models.count_params(shapes['params']),
                           'batch_stats': models.count_params(shapes.get('batch_stats', {}))}
  variables = random_tree(shapes)
  forward = []
  for batch in settings.batch_sizes:
    try:
      forward.append(benchmark_forward(module, variables, resolution, batch, settings.num_runs, settings.warmup_runs,
                                       peak))
    except Exception as e:  # pylint: disable=broad-except  # e.g. out of memory: record it, go on
      forward.append({'batch_size': batch, **_error(e)})
  entry['forward'] = forward
  if forward and 'error' not in forward[0]:
    entry['gflops_per_image'] = forward[0]['gflops_per_image']
    if forward[0]['batch_size'] == 1:
      entry['latency_batch1'] = forward[0]['step']
  train = []
  for method in settings.methods:
    batch, out_of_memory = settings.train_batch_size, []
    while True:
      try:
        train.append(benchmark_train_step(method_config(config, method, model_cfg), method, resolution, batch,
                                          settings.train_runs, settings.warmup_runs, peak))
      except Exception as e:  # pylint: disable=broad-except
        if _is_out_of_memory(e) and batch > 1:  # halve the batch and try again; say so
          out_of_memory.append(batch)
          batch //= 2
          continue
        train.append({'method': method, 'batch_size': batch, **_error(e)})
      break
    if out_of_memory:
      train[-1]['out_of_memory_at_batch'] = out_of_memory
  entry['train'] = train
  return entry


# ---- environment ------------------------------------------------------------------------------------------------

def device_info() -> dict[str, Any]:
  """Device kind and count, platform, library versions."""
  devices = jax.devices()
  import optax  # pylint: disable=import-outside-toplevel
  return {'platform': devices[0].platform, 'device_kind': devices[0].device_kind, 'device_count': len(devices),
          'benchmarked_devices': 1, 'host_cpus': os.cpu_count(), 'python': platform_lib.python_version(),
          'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'flax': flax.__version__,
          'optax': optax.__version__, 'numpy': np.__version__}


def precision_info(platform: str) -> dict[str, Any]:
  """The matmul/conv precision in force: JAX's setting and what it means on this platform."""
  setting = jax.config.jax_default_matmul_precision
  full = str(setting).lower() in ('highest', 'float32')
  if platform == 'gpu':
    float32 = ('full float32 (precision=highest)' if full else
               'TF32 (JAX/XLA default precision for float32 dots and convs on NVIDIA Ampere and newer GPUs)')
  elif platform == 'tpu':
    float32 = 'full float32 (precision=highest)' if full else 'bfloat16 passes (TPU default precision)'
  else:
    float32 = 'full float32 (CPU)'
  return {'jax_default_matmul_precision': setting, 'float32_effective': float32,
          'bfloat16': 'bfloat16 operands with float32 accumulation; parameters float32; losses and softmax float32',
          'XLA_FLAGS': os.environ.get('XLA_FLAGS', ''), 'NVIDIA_TF32_OVERRIDE': os.environ.get('NVIDIA_TF32_OVERRIDE')}


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The device's dense peak TFLOP/s for `dtype` (bfloat16, or float32 run as TF32), where known."""
  for kind, (bf16, tf32) in PEAK_TFLOPS.items():
    if kind.lower() in device_kind.lower():
      return bf16 if dtype == 'bfloat16' else tf32
  return None


# ---- report -----------------------------------------------------------------------------------------------------

def _fmt(value: Any, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def format_table(results: dict[str, Any]) -> str:
  """A Markdown table of every forward and train-step measurement in `results`."""
  lines = ['| model | resolution | dtype | params | GFLOPs/img | what | batch | compile s | p50 ms | mean ms | p90 ms '
           '| images/s | TFLOP/s |', '| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: '
           '| ---: |']
  for e in results['entries']:
    head = (f"| {e['model']} | {e['resolution'][0]}x{e['resolution'][1]} | {e['dtype']} | {e['params'] / 1e6:.2f}M "
            f"| {_fmt(e.get('gflops_per_image'), '.1f')} ")
    rows = [('forward', r) for r in e['forward']] + [(f"train {r['method']}", r) for r in e['train']]
    for what, r in rows:
      if 'error' in r:
        lines.append(head + f"| {what} | {r['batch_size']} | {r['error']} | | | | | |")
        continue
      s = r['step']
      lines.append(head + f"| {what} | {r['batch_size']} | {r['compile_s']:.1f} | {s['p50_ms']:.2f} "
                   f"| {s['mean_ms']:.2f} | {s['p90_ms']:.2f} | {r['images_per_s']:.1f} "
                   f"| {_fmt(r.get('tflops_per_s'), '.2f')} |")
  return '\n'.join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Benchmarks per `config.benchmark` (device defaults where empty), writes `<workdir>/complexity.json`, prints
  a table, and returns what it wrote."""
  start = time.perf_counter()
  device = device_info()
  settings = resolve_settings(config, device['platform'])
  notes = ['GFLOPs: XLA cost analysis of the compiled eval forward pass at batch 1 (a multiply-add counts as 2).',
           'Times: compiled executable only, inputs on the device, after warm-up, each call ended by '
           'block_until_ready; images/s = batch / median. Train steps: state donated; batch = images per domain.']
  if settings.reduced_cpu_defaults:
    notes.append('CPU: reduced defaults (small resolution, float32 only, few runs); the figures that matter are '
                 'taken on a GPU with the GPU defaults (512x1024, float32 and bfloat16, batch 1/8/16, 200 runs).')
  for note in notes:
    print(note)
  entries = []
  for name in settings.models:
    for resolution in settings.resolutions:
      for dtype in settings.dtypes:
        print(f'benchmarking {name} {resolution[0]}x{resolution[1]} {dtype} ...', flush=True)
        entries.append(benchmark_entry(config, name, resolution, dtype, settings,
                                       peak_tflops(device['device_kind'], dtype)))
  overview = method_parameter_overview(config)
  if 'networks' in overview:
    print(f"{overview['method']} ({overview['model']}):\n{trainer.format_parameter_overview(overview['networks'])}")
  results = {
      'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'device': device, 'precision': precision_info(device['platform']),
      'settings': dataclasses.asdict(settings), 'notes': notes,
      'config': json.loads(config.to_json_best_effort()), 'parameter_overview': overview, 'entries': entries,
      'wall_s': time.perf_counter() - start,
  }
  path = os.path.join(workdir, 'complexity.json')
  files.write_json(path, results)
  print(f"{device['device_kind']} x{device['device_count']} ({device['platform']}), jax {device['jax']}, "
        f"float32 = {results['precision']['float32_effective']}")
  print(format_table(results))
  print(f'wrote {path} ({results["wall_s"]:.0f} s)')
  sys.stdout.flush()
  return results
