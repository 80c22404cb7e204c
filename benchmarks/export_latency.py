"""Latency of the exported model: onnxruntime on the CPU next to our own compiled forward pass, same process.

  python benchmarks/export_latency.py [--workdir=RUN] [--size 128 256] [--batch 1 4] [--runs 20] [--json=out.json]

Three programs compute the same thing (evaluation's forward pass to softmax probabilities, `export.forward_fn`) on
the same float32 [B, H, W, 3] inputs: (1) ours: `jax.jit` with the weights as arguments, as evaluation runs it;
(2) the StableHLO export (`--mode=export`: weights embedded as constants), deserialised and called; (3) the ONNX
export (jax2onnx) in onnxruntime's CPU provider. Each is timed as `rtda_jax.benchmark` times: warm-up calls first,
then every call on its own, ended by `block_until_ready` (onnxruntime returns host arrays); the three take turns
call by call, so that the machine's other load falls on them alike. XLA and onnxruntime both use every core by
default (`--threads=N` sets onnxruntime's intra-op threads). BiSeNet, random weights unless `--workdir` names a
trained run (speed does not depend on the weights); the largest difference of the probabilities from (1) is
printed, so a fast but wrong program shows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rtda_jax import benchmark, export, methods, models  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='', help='a trained run (its best checkpoint); default: random BiSeNet')
  parser.add_argument('--size', type=int, nargs=2, default=(128, 256), metavar=('H', 'W'))
  parser.add_argument('--batch', type=int, nargs='+', default=(1, 4))
  parser.add_argument('--runs', type=int, default=20, help='timed calls per program and batch size')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--threads', type=int, default=0, help='onnxruntime intra-op threads (0: its default)')
  parser.add_argument('--json', default='', help='also write the figures here')
  args = parser.parse_args(argv)
  size = tuple(args.size)

  from configs import source_only  # pylint: disable=import-outside-toplevel
  config = source_only.get_config(None)  # BiSeNet
  if args.workdir:
    from rtda_jax import predict  # pylint: disable=import-outside-toplevel
    method, variables, info, _ = predict.load_run_model(config, args.workdir, 'best')
    weights = f"{info['workdir']} step {info['step']}"
  else:
    method = methods.get_method(config)
    variables = benchmark.random_tree(models.init_shapes(method.model, (1, *size, 3), train=False))
    weights = 'random'
  forward = export.forward_fn(method, variables, size, 'softmax')  # the exported function, weights closed over
  ours = jax.jit(lambda v, x: export.forward_fn(method, v, size, 'softmax')(x))  # weights as arguments

  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'model.stablehlo')
    with open(path, 'wb') as f:
      f.write(export.export_stablehlo(forward, size).serialize())
    stablehlo = export.load_stablehlo(path)
    path = os.path.join(tmp, 'model.onnx')
    with open(path, 'wb') as f:
      f.write(export.export_onnx(forward, size, 'softmax').SerializeToString())
    onnx_size = os.path.getsize(path)
    ort = export.load_onnx(path, num_threads=args.threads)

  import onnxruntime  # pylint: disable=import-outside-toplevel
  rows = []
  for batch in args.batch:
    x_host = benchmark.random_images(batch, size)
    x = np.asarray(x_host)
    reference = np.asarray(ours(variables, x_host))
    for call in (lambda: ours(variables, x_host), lambda: stablehlo(x_host), lambda: ort(x)):
      benchmark.time_calls(call, 0, args.warmup)  # compile and warm up
    programs = {'jax.jit (ours, weights as arguments)': lambda: ours(variables, x_host),
                'StableHLO export, reloaded (jax)': lambda: stablehlo(x_host),
                'ONNX export, onnxruntime CPU': lambda: ort(x)}
    diffs = {name: float(np.abs(np.asarray(call()) - reference).max()) for name, call in programs.items()}
    times = {name: [] for name in programs}
    for _ in range(args.runs):  # interleaved: the machine's other load falls on the three alike
      for name, call in programs.items():
        times[name] += benchmark.time_calls(call, 1, 0)
    for name, seconds in times.items():
      stats = benchmark.timing_stats(seconds)
      rows.append({'program': name, 'batch': batch, **stats, 'images_per_s': batch / (stats['p50_ms'] / 1e3),
                   'max_abs_diff_vs_ours': diffs[name]})

  result = {'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'model': 'bisenet', 'weights': weights, 'size': list(size), 'runs': args.runs,
            'host': {'cpus': os.cpu_count(), 'machine': platform.machine(), 'processor': platform.processor()},
            'versions': {'jax': jax.__version__, 'onnxruntime': onnxruntime.__version__},
            'load_average': os.getloadavg(), 'onnx_threads': args.threads or 'default', 'onnx_bytes': onnx_size,
            'rows': rows}
  print(f"BiSeNet {size[0]}x{size[1]}, {weights} weights, softmax output, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, {args.runs} timed calls each, load average "
        f"{os.getloadavg()[0]:.1f}")
  print('| program | batch | min ms | p50 ms | mean ms | p90 ms | images/s (p50) | max abs diff vs ours |')
  print('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for r in rows:
    print(f"| {r['program']} | {r['batch']} | {r['min_ms']:.2f} | {r['p50_ms']:.2f} | {r['mean_ms']:.2f} "
          f"| {r['p90_ms']:.2f} | {r['images_per_s']:.1f} | {r['max_abs_diff_vs_ours']:.1e} |")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == '__main__':
  main()
