"""A PyTorch twin of our BiSeNet (ResNet-18) and DeepLab-v2 (ResNet-101): same logits, timed side by side with ours.

    pip install torch                                         # CPU or CUDA build; not a project requirement
    python benchmarks/pytorch_twin.py --json=/tmp/twin.json   # GPU: 512x1024, fp32 + bf16, batch 1/8/16
    python benchmarks/pytorch_twin.py --models=bisenet --resolution=128x256 --batch_sizes=1 --json=/tmp/twin.json

Layer for layer the networks of rtda_jax/models (bisenet.py, deeplabv2.py, resnet.py), written here without
torchvision, with module names that make our Flax variables, exported by `pretrained.flax_to_torch`
(kernel HWIO -> weight OIHW, BN scale/bias/mean/var -> weight/bias/running_mean/running_var), load with
`load_state_dict(strict=True)`. Steps:
1. parity: the same random variables in both, float32 on CPU at a small size: the logits must agree (--tolerance),
   in eval mode and, in the models' BatchNorm mode, in one training forward pass, whose running statistics
   (PyTorch's unbiased-variance update) must agree too (`train_parity`);
2. speed: our eval forward pass timed by `rtda_jax.benchmark` (compiled executable, inputs on the device,
   block_until_ready) and the twin timed as a careful PyTorch user would: eval + inference_mode, channels_last,
   cudnn.benchmark, TF32 allowed for float32 (as JAX's default precision on NVIDIA GPUs), bf16 autocast, eager and
   torch.compile; every call ended by a synchronise, wall clock (and CUDA events), warm-up and compile excluded.
The fraction of the H100's dense bf16 peak (989 TFLOP/s) uses our XLA FLOP count (the same network) and is only
meaningful on an H100-class GPU (n/a on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# JAX would otherwise take 75 % of the GPU's memory up front and leave PyTorch short.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

import jax  # pylint: disable=wrong-import-position
import ml_collections  # pylint: disable=wrong-import-position

from rtda_jax import benchmark, models  # pylint: disable=wrong-import-position
from rtda_jax.models import bisenet as jax_bisenet, deeplabv2 as jax_deeplabv2  # pylint: disable=wrong-import-position
from rtda_jax.models.pretrained import flax_to_torch  # pylint: disable=wrong-import-position

H100_BF16_PEAK_TFLOPS = 989.0


# ---- the twin networks (NCHW; inputs float32 0..255 RGB [B, 3, H, W]) ------------------------------------------

def bn(channels: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: bool = False,
               caffe_style: bool = False):
    super().__init__()
    del caffe_style
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, dilation, dilation, bias=False)
    self.bn1 = bn(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
    self.bn2 = bn(planes)
    self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), bn(planes))
                       if downsample else None)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: bool = False,
               caffe_style: bool = False):
    super().__init__()
    s1, s2 = (stride, 1) if caffe_style else (1, stride)
    self.conv1 = nn.Conv2d(inplanes, planes, 1, s1, bias=False)
    self.bn1 = bn(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, s2, dilation, dilation, bias=False)
    self.bn2 = bn(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = bn(planes * 4)
    self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), bn(planes * 4))
                       if downsample else None)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nn.Module):
  """rtda_jax.models.resnet.ResNet: torchvision (default) or caffe style, output stride 32 or 8; no fc."""

  def __init__(self, depth: int = 18, output_stride: int = 32, caffe_style: bool = False):
    super().__init__()
    kind, blocks = {18: ('basic', (2, 2, 2, 2)), 101: ('bottleneck', (3, 4, 23, 3))}[depth]
    block = BasicBlock if kind == 'basic' else Bottleneck
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = bn(64)
    self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=caffe_style)
    inplanes, dilation = 64, 1
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
      stride, previous = (1 if stage == 1 else 2), dilation
      if stride == 2 and 2 ** (stage + 1) > output_stride:
        dilation, stride = dilation * 2, 1
      first_dilation = dilation if caffe_style else previous
      layers = []
      for i in range(n):
        down = i == 0 and (stride != 1 or inplanes != planes * block.expansion)
        layers.append(block(inplanes, planes, stride if i == 0 else 1, first_dilation if i == 0 else dilation,
                            down, caffe_style))
        inplanes = planes * block.expansion
      self.add_module(f'layer{stage}', nn.Sequential(*layers))

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    feats = []
    for stage in range(1, 5):
      x = getattr(self, f'layer{stage}')(x)
      feats.append(x)
    return tuple(feats)


def upsample(x: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
  """Bilinear, half-pixel centres (align_corners=False, as `jax.image.resize` when upsampling) or corner-aligned, as
  `rtda_jax.models.resize.resize_bilinear`."""
  if tuple(x.shape[2:]) == tuple(size):
    return x
  return F.interpolate(x, size, mode='bilinear', align_corners=align_corners)


class ConvBlock(nn.Module):
  def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 2, padding: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, kernel, stride, padding)
    self.bn = bn(cout)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.relu(self.bn(self.conv1(x)))


class SpatialPath(nn.Module):
  def __init__(self):
    super().__init__()
    self.convblock1, self.convblock2, self.convblock3 = ConvBlock(3, 64), ConvBlock(64, 128), ConvBlock(128, 256)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.convblock3(self.convblock2(self.convblock1(x)))


class AttentionRefinementModule(nn.Module):
  """x * sigmoid(conv1x1(mean(x))), no BatchNorm (as our bisenet.py)."""

  def __init__(self, channels: int):
    super().__init__()
    self.conv = nn.Conv2d(channels, channels, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(self.conv(x.mean((2, 3), keepdim=True)))


class FeatureFusionModule(nn.Module):
  def __init__(self, num_classes: int, in_channels: int = 1024):
    super().__init__()
    self.convblock = ConvBlock(in_channels, num_classes, stride=1)
    self.conv1 = nn.Conv2d(num_classes, num_classes, 1)
    self.conv2 = nn.Conv2d(num_classes, num_classes, 1)

  def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    feature = self.convblock(torch.cat([spatial, context], 1))
    att = torch.sigmoid(self.conv2(F.relu(self.conv1(feature.mean((2, 3), keepdim=True)))))
    return feature * att + feature


class BiSeNet(nn.Module):
  """rtda_jax.models.bisenet.BiSeNet (logits only; the supervision heads exist for the weights)."""

  def __init__(self, num_classes: int = 19, align_corners: bool = False):
    super().__init__()
    self.align_corners = align_corners
    self.register_buffer('mean', torch.tensor(jax_bisenet.IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
    self.register_buffer('std', torch.tensor(jax_bisenet.IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
    self.spatial_path = SpatialPath()
    self.context_path = ResNet(18)
    self.attention_refinement_module1 = AttentionRefinementModule(256)
    self.attention_refinement_module2 = AttentionRefinementModule(512)
    self.feature_fusion_module = FeatureFusionModule(num_classes)
    self.conv = nn.Conv2d(num_classes, num_classes, 1)
    self.supervision1 = nn.Conv2d(256, num_classes, 1)
    self.supervision2 = nn.Conv2d(512, num_classes, 1)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    size = images.shape[2:]
    x = (images - self.mean) / self.std
    spatial = self.spatial_path(x)
    _, _, layer3, layer4 = self.context_path(x)
    cx1 = self.attention_refinement_module1(layer3)
    cx2 = self.attention_refinement_module2(layer4) * layer4.mean((2, 3), keepdim=True)
    size8 = spatial.shape[2:]
    context = torch.cat([upsample(cx1, size8), upsample(cx2, size8)], 1)
    fused = upsample(self.feature_fusion_module(spatial, context), size, self.align_corners)
    return self.conv(fused).float()


class ASPPClassifier(nn.ModuleList):
  """Sum of four dilated 3x3 convs (children '0'..'3', like our Flax names)."""

  def __init__(self, cin: int, num_classes: int, dilations: tuple[int, ...] = jax_deeplabv2.ASPP_DILATIONS):
    super().__init__([nn.Conv2d(cin, num_classes, 3, 1, d, d) for d in dilations])

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return sum(conv(x) for conv in self)


class DeepLabV2(nn.Module):
  """rtda_jax.models.deeplabv2.DeepLabV2 (single level): caffe ResNet-101, output stride 8, ASPP sum."""

  def __init__(self, num_classes: int = 19, align_corners: bool = False):
    super().__init__()
    self.align_corners = align_corners
    self.register_buffer('mean', torch.tensor(jax_deeplabv2.CAFFE_BGR_MEAN).view(1, 3, 1, 1), persistent=False)
    self.backbone = ResNet(101, output_stride=8, caffe_style=True)
    self.classifier = ASPPClassifier(2048, num_classes)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = images.flip(1) - self.mean  # RGB -> BGR minus the caffe mean
    return upsample(self.classifier(self.backbone(x)[3]).float(), images.shape[2:], self.align_corners)


TWINS: dict[str, Callable[..., nn.Module]] = {'bisenet': BiSeNet, 'deeplabv2': DeepLabV2}
BACKBONES = {'bisenet': 'context_path', 'deeplabv2': 'backbone'}  # where `bn_mode` applies, as in our models


# ---- weights and parity -----------------------------------------------------------------------------------------

def export_state_dict(variables: Any) -> dict[str, np.ndarray]:
  """Our Flax {'params', 'batch_stats'} -> a numpy state dict with the twin's (torchvision-style) key names."""
  return flax_to_torch(jax.tree_util.tree_map(np.asarray, variables))


def load_twin(name: str, variables: Any, num_classes: int = 19, align_corners: bool = False) -> nn.Module:
  """The twin of model `name` holding our `variables`, in eval mode (strict: every key must match)."""
  twin = TWINS[name](num_classes, align_corners)
  state = {k: torch.from_numpy(np.array(v, np.float32, copy=True)) for k, v in export_state_dict(variables).items()}
  for key, value in twin.state_dict().items():
    if key.endswith('num_batches_tracked'):
      state[key] = value
  twin.load_state_dict(state, strict=True)
  return twin.eval()


def train_mode(twin: nn.Module, name: str, bn_mode: str) -> nn.Module:
  """The twin in training as our model in `bn_mode` ('train', 'batch', 'frozen'): the backbone's BN scale/bias
  without gradients in 'batch' / 'frozen' (as AdaptSegNet / FDA / DACS), and its BN in eval mode in 'frozen'."""
  twin.train()
  for module in getattr(twin, BACKBONES[name]).modules():
    if isinstance(module, nn.BatchNorm2d):
      module.weight.requires_grad_(bn_mode == 'train')
      module.bias.requires_grad_(bn_mode == 'train')
      if bn_mode == 'frozen':
        module.eval()
  return twin


def jax_setup(name: str, resolution: tuple[int, int], dtype: str = 'float32', seed: int = 0,
              num_classes: int = 19, bn_mode: str | None = None, align_corners: bool = False) -> tuple[Any, Any]:
  """(our module, random variables) for model `name` at `resolution`."""
  cfg = ml_collections.ConfigDict(dict(name=name, num_classes=num_classes, dtype=dtype, pretrained=None,
                                       multi_level=False, bn_mode=bn_mode, align_corners=align_corners))
  module = models.get_model(cfg)
  return module, benchmark.random_tree(models.init_shapes(module, (1, *resolution, 3), train=False), seed)


def parity(name: str, resolution: tuple[int, int] = (64, 128), batch: int = 2, seed: int = 0) -> dict[str, float]:
  """Same random variables and images in both, float32 on CPU: max |ours - twin| and max |ours|."""
  with jax.default_device(jax.devices('cpu')[0]):
    module, variables = jax_setup(name, resolution, seed=seed)
    images = np.random.default_rng(seed).uniform(0, 255, (batch, *resolution, 3)).astype(np.float32)
    ours = np.asarray(jax.jit(benchmark.forward_fn(module))(variables, images))
  twin = load_twin(name, variables)
  with torch.inference_mode():
    theirs = twin(torch.from_numpy(images).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  diff = np.abs(ours - theirs)
  return {'max_abs_diff': float(diff.max()), 'mean_abs_diff': float(diff.mean()),
          'max_abs_logit': float(np.abs(ours).max()), 'resolution': list(resolution), 'batch': batch}


def train_parity(name: str, bn_mode: str | None = None, align_corners: bool = False,
                 resolution: tuple[int, int] = (64, 128), batch: int = 2, seed: int = 0,
                 float64_reference: bool = False) -> dict[str, Any]:
  """One training forward pass of both in `bn_mode` (None: the model's default) from the same variables, float32 on
  CPU: max |ours - twin| of the logits and of every BatchNorm running statistic after its update (`max_abs_stat`
  scales it), and which statistics moved (none of the backbone's in 'frozen' mode). With `float64_reference`, also
  the errors of ours and of the float32 twin against the twin in float64: batch-statistics BN with few values per
  channel amplifies float32 rounding, and the twin's own error is the yardstick for ours."""
  with jax.default_device(jax.devices('cpu')[0]):
    module, variables = jax_setup(name, resolution, seed=seed, bn_mode=bn_mode, align_corners=align_corners)
    images = np.random.default_rng(seed).uniform(0, 255, (batch, *resolution, 3)).astype(np.float32)
    out, updates = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=['batch_stats']))(variables, images)
    ours = np.asarray(out['logits'])
  before = export_state_dict({'batch_stats': variables['batch_stats']})
  after = export_state_dict({'batch_stats': updates['batch_stats']})
  twin = train_mode(load_twin(name, variables, align_corners=align_corners), name, module.bn_mode)
  with torch.no_grad():
    theirs = twin(torch.from_numpy(images).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  state = {k: v.numpy() for k, v in twin.state_dict().items()}
  stat_diff = lambda x, y: max(float(np.abs(x[k] - y[k]).max()) for k in after)
  result = {'bn_mode': module.bn_mode, 'max_abs_diff': float(np.abs(ours - theirs).max()),
            'max_abs_logit': float(np.abs(ours).max()), 'max_abs_stat_diff': stat_diff(after, state),
            'max_abs_stat': max(float(np.abs(v).max()) for v in after.values()),
            'moved': sorted(k for k in after if not np.array_equal(after[k], before[k])),
            'twin_moved': sorted(k for k in after if not np.array_equal(state[k], before[k])),
            'resolution': list(resolution), 'batch': batch}
  if float64_reference:
    twin64 = train_mode(load_twin(name, variables, align_corners=align_corners).double(), name, module.bn_mode)
    with torch.no_grad():
      exact = twin64(torch.from_numpy(images).double().permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    state64 = {k: v.numpy() for k, v in twin64.state_dict().items()}
    result['float64'] = {'ours_logit_error': float(np.abs(ours - exact).max()),
                         'twin_logit_error': float(np.abs(theirs - exact).max()),
                         'ours_stat_error': stat_diff(after, state64), 'twin_stat_error': stat_diff(state, state64)}
  return result


# ---- timing -----------------------------------------------------------------------------------------------------

def time_torch(fn: Callable[[], torch.Tensor], num_runs: int, warmup_runs: int, cuda: bool) -> dict[str, Any]:
  """Wall-clock stats of `fn` (each call synchronised), plus CUDA-event p50 on GPU; the first call (compile,
  autotuning) is timed apart as `first_call_s`."""
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  start = time.perf_counter()
  fn()
  sync()
  first = time.perf_counter() - start
  for _ in range(warmup_runs):
    fn()
  sync()
  wall, events = [], []
  for _ in range(num_runs):
    if cuda:
      begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
      begin.record()
    start = time.perf_counter()
    fn()
    if cuda:
      end.record()
    sync()
    wall.append(time.perf_counter() - start)
    if cuda:
      events.append(begin.elapsed_time(end))
  out = {'first_call_s': first, 'step': benchmark.timing_stats(wall)}
  if events:
    out['cuda_events_p50_ms'] = float(np.median(events))
  return out


def bench_torch(twin: nn.Module, resolution: tuple[int, int], batch: int, dtype: str, compiled: bool,
                num_runs: int, warmup_runs: int, device: torch.device, compile_mode: str) -> dict[str, Any]:
  """Eval forward of the twin: channels_last, inference_mode, bf16 autocast for 'bfloat16'; eager or compiled."""
  cuda = device.type == 'cuda'
  model = twin.to(device).to(memory_format=torch.channels_last)
  images = torch.rand(batch, 3, *resolution, device=device).mul_(255).contiguous(memory_format=torch.channels_last)
  fn = torch.compile(model, mode=compile_mode, dynamic=False) if compiled else model

  def call() -> torch.Tensor:
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=dtype == 'bfloat16'):
      return fn(images)

  try:
    return time_torch(call, num_runs, warmup_runs, cuda)
  finally:
    del fn, images
    if cuda:
      torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Parity, then our and the twin's timings for every model, dtype and batch size; returns the results."""
  cuda = torch.cuda.is_available() and jax.devices()[0].platform == 'gpu'
  device = torch.device('cuda' if cuda else 'cpu')
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  torch.backends.cudnn.benchmark = True
  # TF32 for float32 matmuls and convs, as JAX's default precision on NVIDIA GPUs (unless JAX is set to 'highest').
  tf32 = str(jax.config.jax_default_matmul_precision).lower() not in ('highest', 'float32')
  torch.backends.cuda.matmul.allow_tf32 = tf32
  torch.backends.cudnn.allow_tf32 = tf32
  torch._dynamo.config.cache_size_limit = 64  # one compiled graph per (batch size, dtype)
  kind = jax.devices()[0].device_kind
  h100 = 'h100' in kind.lower() or 'h200' in kind.lower()
  resolution = tuple(int(v) for v in args.resolution.split('x'))
  results: dict[str, Any] = {
      'device': benchmark.device_info(), 'torch': torch.__version__,
      'torch_device': torch.cuda.get_device_name() if cuda else 'cpu', 'torch_threads': torch.get_num_threads(),
      'precision': {'jax': benchmark.precision_info(jax.devices()[0].platform),
                    'torch_float32': 'TF32 allowed (matmul and cuDNN)' if cuda and tf32 else 'float32',
                    'torch_bfloat16': 'torch.autocast(bfloat16)'},
      'settings': vars(args), 'parity': {}, 'rows': []}
  for name in args.models.split(','):
    check = parity(name, seed=args.seed)
    check['ok'] = check['max_abs_diff'] <= args.tolerance * max(1.0, check['max_abs_logit'])
    train_check = train_parity(name, seed=args.seed)
    train_check['ok'] = (train_check['max_abs_diff'] <= args.tolerance * max(1.0, train_check['max_abs_logit'])
                         and train_check['max_abs_stat_diff'] <= args.tolerance * max(1.0, train_check['max_abs_stat'])
                         and train_check['moved'] == train_check['twin_moved'])
    check['train'] = train_check
    check['ok'] = check['ok'] and train_check['ok']
    results['parity'][name] = check
    print(f"parity {name}: max |JAX - PyTorch| = {check['max_abs_diff']:.2e} (max |logit| "
          f"{check['max_abs_logit']:.2f}); training forward ({train_check['bn_mode']}): logits "
          f"{train_check['max_abs_diff']:.2e}, running statistics {train_check['max_abs_stat_diff']:.2e} -> "
          f"{'OK' if check['ok'] else 'MISMATCH'}", flush=True)
    for dtype in args.dtypes.split(','):
      module, variables = jax_setup(name, resolution, dtype, seed=args.seed)
      twin = load_twin(name, variables)
      peak = H100_BF16_PEAK_TFLOPS if h100 else None
      for batch in (int(b) for b in args.batch_sizes.split(',')):
        print(f'timing {name} {args.resolution} {dtype} batch {batch} ...', flush=True)
        ours = benchmark.benchmark_forward(module, variables, resolution, batch, args.num_runs, args.warmup_runs)
        flops = ours['gflops_per_image'] * 1e9 * batch if ours['gflops_per_image'] else None
        row = {'model': name, 'resolution': list(resolution), 'dtype': dtype, 'batch_size': batch, 'jax': ours}
        for label, compiled in (('torch_eager', False), ('torch_compile', True)):
          if compiled and args.compile_mode == 'none':
            continue
          try:
            row[label] = bench_torch(twin, resolution, batch, dtype, compiled, args.num_runs, args.warmup_runs,
                                     device, args.compile_mode)
          except Exception as e:  # pylint: disable=broad-except  # e.g. no C++ compiler for inductor
            row[label] = {'error': f'{type(e).__name__}: {str(e)[:300]}'}
        for label in ('jax', 'torch_eager', 'torch_compile'):
          step = row.get(label, {}).get('step')
          if step and flops:
            row[label]['tflops_per_s'] = flops / (step['p50_ms'] / 1e3) / 1e12
            row[label]['fraction_of_h100_bf16_peak'] = row[label]['tflops_per_s'] / peak if peak else None
        results['rows'].append(row)
  print(format_table(results))
  return results


def format_table(results: dict[str, Any]) -> str:
  """Side by side: p50 ms and images/s of ours, PyTorch eager and compiled; ratio = best PyTorch p50 / ours."""
  lines = ['| model | resolution | dtype | batch | JAX p50 ms | PyTorch eager p50 ms | torch.compile p50 ms '
           '| best PyTorch / JAX | JAX images/s | JAX % H100 bf16 peak | best PyTorch % peak |',
           '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']

  def p50(r: dict[str, Any] | None) -> float | None:
    return r['step']['p50_ms'] if r and 'step' in r else None

  def pct(r: dict[str, Any] | None) -> str:
    value = r.get('fraction_of_h100_bf16_peak') if r else None
    return 'n/a' if value is None else f'{100 * value:.1f}%'

  for row in results['rows']:
    ours, eager, comp = p50(row['jax']), p50(row.get('torch_eager')), p50(row.get('torch_compile'))
    best_label = min((l for l in ('torch_eager', 'torch_compile') if p50(row.get(l))), key=lambda l: p50(row[l]),
                     default=None)
    best = p50(row[best_label]) if best_label else None
    fmt = lambda v: '-' if v is None else f'{v:.2f}'
    lines.append(f"| {row['model']} | {row['resolution'][0]}x{row['resolution'][1]} | {row['dtype']} "
                 f"| {row['batch_size']} | {fmt(ours)} | {fmt(eager)} | {fmt(comp)} "
                 f"| {fmt(best / ours if best and ours else None)} | {row['jax']['images_per_s']:.1f} "
                 f"| {pct(row['jax'])} | {pct(row[best_label]) if best_label else 'n/a'} |")
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  gpu = jax.devices()[0].platform == 'gpu'
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='bisenet,deeplabv2')
  parser.add_argument('--resolution', default='512x1024' if gpu else '128x256', help='HxW of the timed runs')
  parser.add_argument('--dtypes', default='float32,bfloat16' if gpu else 'float32')
  parser.add_argument('--batch_sizes', default='1,8,16' if gpu else '1')
  parser.add_argument('--num_runs', type=int, default=200 if gpu else 10)
  parser.add_argument('--warmup_runs', type=int, default=10 if gpu else 2)
  parser.add_argument('--compile_mode', default='default' if gpu else 'none',
                      help="torch.compile mode ('default', 'reduce-overhead' (CUDA graphs), 'max-autotune', "
                           "'max-autotune-no-cudagraphs') or 'none' (eager only)")
  parser.add_argument('--torch_threads', type=int, default=0,
                      help="PyTorch CPU threads (0 = PyTorch's default); 1 on a CPU shared with other jobs")
  parser.add_argument('--tolerance', type=float, default=1e-3, help='parity: max |diff| / max(1, max |logit|)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', default=None, help='write the results here')
  args = parser.parse_args(argv)
  results = run(args)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)
    print(f'wrote {args.json}')
  return 0 if all(p['ok'] for p in results['parity'].values()) else 1


if __name__ == '__main__':
  sys.exit(main())
