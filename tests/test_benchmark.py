"""--mode=benchmark: complexity.json's fields and plausible values; XLA's FLOPs against an independent count of the
convolutions; the PyTorch twin's logits against ours (only where torch is installed). BiSeNet, tiny shapes, CPU."""

from __future__ import annotations

import datetime
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.extend import core as jex_core

from configs import oracle
from rtda_jax import benchmark, methods, models
from rtda_jax.methods import base
from tests.script_utils import load_benchmark_script

RESOLUTION = (64, 128)


def bisenet_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name='bisenet', num_classes=19, dtype='float32', pretrained=None,
                                        multi_level=False))


# ---- an independent FLOP count: 2 x multiply-adds of every convolution in the jaxpr, padding taps excluded ---------

def _valid_taps(size: int, kernel: int, stride: int, pad_low: int, dilation: int, out: int) -> int:
  """Sum over output positions of the kernel taps that fall inside the (unpadded) input, along one axis."""
  pos = np.arange(out)[:, None] * stride - pad_low + np.arange(kernel)[None, :] * dilation
  return int(((pos >= 0) & (pos < size)).sum())


def conv_flops(jaxpr: jex_core.Jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      lhs, rhs = (v.aval for v in eqn.invars)
      out, p = eqn.outvars[0].aval, eqn.params
      batch_dim, _, *lhs_spatial = p['dimension_numbers'].lhs_spec
      _, in_dim, *rhs_spatial = p['dimension_numbers'].rhs_spec
      _, out_dim, *out_spatial = p['dimension_numbers'].out_spec
      taps = 1
      for j, (ls, rs, os_) in enumerate(zip(lhs_spatial, rhs_spatial, out_spatial)):
        taps *= _valid_taps(lhs.shape[ls], rhs.shape[rs], p['window_strides'][j], p['padding'][j][0],
                            p['rhs_dilation'][j], out.shape[os_])
      total += 2 * lhs.shape[batch_dim] * out.shape[out_dim] * rhs.shape[in_dim] * taps
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        if isinstance(sub, jex_core.ClosedJaxpr):
          total += conv_flops(sub.jaxpr)
        elif isinstance(sub, jex_core.Jaxpr):
          total += conv_flops(sub)
  return total


def bisenet_conv_gflops(resolution: tuple[int, int]) -> float:
  module = models.get_model(bisenet_config())
  shapes = models.init_shapes(module, (1, *resolution, 3), train=False)
  jaxpr = jax.make_jaxpr(benchmark.forward_fn(module))(shapes, jax.ShapeDtypeStruct((1, *resolution, 3),
                                                                                      jnp.float32))
  return conv_flops(jaxpr.jaxpr) / 1e9


# ---- one small run, shared -----------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def results(tmp_path_factory):
  config = oracle.get_config()
  config.benchmark.resolutions = (RESOLUTION,)
  config.benchmark.dtypes = ('float32',)
  config.benchmark.batch_sizes = (1, 2)
  config.benchmark.num_runs = 3
  config.benchmark.methods = ('supervised',)  # the adversarial step's compile is slow on CPU; see its test below
  config.train.batch_size = 2
  workdir = tmp_path_factory.mktemp('bench')
  out = benchmark.run(config, str(workdir))
  with open(workdir / 'complexity.json') as f:
    written = json.load(f)
  return out, written


def test_complexity_json_has_the_required_fields(results):
  out, written = results
  assert written['entries'] == json.loads(json.dumps(out['entries']))
  device = written['device']
  assert device['platform'] == 'cpu' and device['device_count'] >= 1 and device['device_kind']
  assert device['jax'] == jax.__version__ and device['jaxlib'] and device['flax']
  assert 'jax_default_matmul_precision' in written['precision'] and written['precision']['float32_effective']
  date = datetime.datetime.fromisoformat(written['date_utc'])
  assert date.tzinfo is not None and abs(datetime.datetime.now(datetime.timezone.utc) - date).total_seconds() < 3600
  assert written['config']['model']['name'] == 'bisenet' and written['config']['benchmark']['num_runs'] == 3
  assert written['settings']['resolutions'] == [list(RESOLUTION)] and not written['settings']['reduced_cpu_defaults']
  [entry] = written['entries']
  assert (entry['model'], entry['resolution'], entry['dtype']) == ('bisenet', list(RESOLUTION), 'float32')


def test_params_equal_count_params(results):
  [entry] = results[1]['entries']
  shapes = models.init_shapes(models.get_model(bisenet_config()), (1, *RESOLUTION, 3), train=False)
  assert entry['params'] == models.count_params(shapes['params']) > 10_000_000


def test_gflops_match_an_independent_count_of_the_convolutions(results):
  [entry] = results[1]['entries']
  analytic = bisenet_conv_gflops(RESOLUTION)
  # Convolutions are nearly all of it; BN, ReLU, pooling, resizes and attention add about 1 %.
  assert analytic <= entry['gflops_per_image'] <= 1.1 * analytic
  assert entry['forward'][1]['gflops_per_image'] == pytest.approx(entry['gflops_per_image'], rel=0.02)


def test_gflops_scale_with_the_pixels():
  module = models.get_model(bisenet_config())

  def flops(resolution):
    shapes = models.init_shapes(module, (1, *resolution, 3), train=False)
    lowered = jax.jit(benchmark.forward_fn(module)).lower(shapes, jax.ShapeDtypeStruct((1, *resolution, 3),
                                                                                       jnp.float32))
    return benchmark.cost_flops(lowered)

  assert 3.8 < flops((128, 256)) / flops(RESOLUTION) < 4.5


def test_timings_are_plausible(results):
  [entry] = results[1]['entries']
  latency = entry['latency_batch1']
  assert latency['runs'] == 3 and 0 < latency['min_ms'] <= latency['p50_ms'] <= latency['p90_ms']
  assert [f['batch_size'] for f in entry['forward']] == [1, 2]
  for f in entry['forward']:
    assert f['compile_s'] > 0 and f['images_per_s'] > 0 and f['step']['p50_ms'] > 0
  [train] = entry['train']
  assert train['method'] == 'supervised' and train['batch_size'] == 2 and train['step']['p50_ms'] > 0
  # forward + backward ~ 3x the forward pass (train-mode BN, loss and optimiser add a little)
  assert 2.5 < train['gflops_per_step'] / (2 * entry['gflops_per_image']) < 4.5
  assert 'bisenet' in benchmark.format_table(results[1])


def test_device_defaults():
  config = oracle.get_config()
  gpu = benchmark.resolve_settings(config, 'gpu')
  assert gpu.models == ('bisenet', 'deeplabv2') and gpu.resolutions == ((512, 1024),)
  assert gpu.dtypes == ('float32', 'bfloat16') and gpu.batch_sizes == (1, 8, 16) and gpu.num_runs >= 200
  assert gpu.methods == ('supervised', 'adversarial') and not gpu.reduced_cpu_defaults
  cpu = benchmark.resolve_settings(config, 'cpu')
  assert cpu.models == ('bisenet',) and cpu.dtypes == ('float32',) and cpu.reduced_cpu_defaults
  assert benchmark.resolve_settings(oracle.get_config('deeplabv2'), 'cpu').models == ('deeplabv2',)


def test_adversarial_method_config_gets_the_adv_fields():
  config = oracle.get_config()
  cfg = benchmark.method_config(config, 'adversarial', benchmark.model_config(config, 'bisenet', 'bfloat16'))
  assert cfg.method == 'adversarial' and cfg.adv.level == 'single' and cfg.model.dtype == 'bfloat16'
  assert methods.get_method(cfg).domains == ('source', 'target') and config.method == 'supervised'


def test_cost_flops_reads_a_dict_or_a_list():
  class Fake:
    def __init__(self, analysis):
      self.analysis = analysis

    def cost_analysis(self):
      return self.analysis

  assert benchmark.cost_flops(Fake({'flops': 5.0})) == 5.0
  assert benchmark.cost_flops(Fake([{'flops': 7.0}])) == 7.0
  assert benchmark.cost_flops(Fake([])) is None and benchmark.cost_flops(Fake({})) is None


def test_pytorch_twin_bisenet_gives_our_logits():
  pytest.importorskip('torch')
  twin = load_benchmark_script('pytorch_twin')
  check = twin.parity('bisenet', resolution=(64, 96), batch=2)
  assert check['max_abs_logit'] > 1.0
  assert check['max_abs_diff'] <= 1e-3 * check['max_abs_logit']
