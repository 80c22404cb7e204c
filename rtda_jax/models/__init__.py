"""Segmentation models and discriminators, found by name.

Every segmentation model is a `flax.linen.Module` with `__call__(images, train) -> dict`:
images float32 [B, H, W, 3] in 0..255 RGB (normalised inside); 'logits' float32 [B, H, W, K]; 'aux' a tuple of
float32 [B, H, W, K] auxiliary logits; 'features' the last backbone feature map [B, h, w, C] float32.
Parameters are float32; computation runs in `model_config.dtype`; BatchNorm statistics live in 'batch_stats'.
`model_config.bn_mode` (None = the model's default: BiSeNet 'train', DeepLab-v2 'batch'; see `norm.BN_MODES`) sets
which statistics BatchNorm uses in training and, through `param_labels`, whether its affine is frozen;
`model_config.align_corners` the bilinear upsampling of the logits to the input size.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rtda_jax.models import bisenet, classes, deeplabv2, discriminator, norm
from rtda_jax.models.bisenet import BiSeNet
from rtda_jax.models.deeplabv2 import DeepLabV2
from rtda_jax.models.discriminator import FCDiscriminator
from rtda_jax.models.resnet import ResNet

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def get_dtype(dtype: Any) -> Any:
  """'float32' / 'bfloat16' (or a dtype) -> a jnp dtype."""
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f'Unknown model dtype {dtype!r}; choose one of {sorted(DTYPES)}.')
    return DTYPES[dtype]
  return dtype


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How to build a model, label its parameters, and where its ImageNet-initialised backbone lives.

  A model with BatchNorm modes sets `default_bn_mode` (what `model.bn_mode=None` means); its `param_labels` is then
  called as `param_labels(params, bn_mode)` with the resolved mode, otherwise as `param_labels(params)`.
  """
  build: Callable[[ml_collections.ConfigDict], nn.Module]
  param_labels: Callable[..., Any]
  backbone_path: tuple[str, ...]  # path of the ResNet inside params / batch_stats, for pretrained.py
  default_bn_mode: str | None = None  # None: the model has no BatchNorm modes (model.bn_mode must stay None)


def _bn_mode(model_config: ml_collections.ConfigDict, default: str) -> str:
  """`model_config.bn_mode`, or `default` when it is None or absent; checked against norm.BN_MODES."""
  mode = model_config.get('bn_mode')
  return norm.check_bn_mode(default if mode is None else mode)


MODELS: dict[str, ModelSpec] = {
    'bisenet': ModelSpec(
        build=lambda c: BiSeNet(num_classes=c.num_classes, output_ids=classes.output_ids(c.get('output_classes')),
                                bn_mode=_bn_mode(c, BiSeNet.bn_mode),
                                align_corners=bool(c.get('align_corners', False)), dtype=get_dtype(c.dtype)),
        param_labels=bisenet.param_labels, backbone_path=('context_path',), default_bn_mode=BiSeNet.bn_mode),
    'deeplabv2': ModelSpec(
        build=lambda c: DeepLabV2(num_classes=c.num_classes, output_ids=classes.output_ids(c.get('output_classes')),
                                  multi_level=bool(c.get('multi_level', False)),
                                  bn_mode=_bn_mode(c, DeepLabV2.bn_mode),
                                  align_corners=bool(c.get('align_corners', False)), dtype=get_dtype(c.dtype)),
        param_labels=deeplabv2.param_labels, backbone_path=('backbone',), default_bn_mode=DeepLabV2.bn_mode),
}


def register_model(name: str, spec: ModelSpec) -> None:
  """Adds a segmentation model to the registry."""
  MODELS[name] = spec


def get_model_spec(name: str) -> ModelSpec:
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r} (config.model.name); choose one of {sorted(MODELS)}.')
  return MODELS[name]


def get_model(model_config: ml_collections.ConfigDict) -> nn.Module:
  """The segmentation network named by `config.model.name`."""
  return get_model_spec(model_config.name).build(model_config)


def bn_mode(model_config: ml_collections.ConfigDict) -> str | None:
  """The BatchNorm mode the model of `model_config` runs in (`model.bn_mode`, None = its default); None for a model
  without BatchNorm modes."""
  spec = get_model_spec(model_config.name)
  if spec.default_bn_mode is None:
    if model_config.get('bn_mode') is not None:
      raise ValueError(f'config.model.bn_mode={model_config.bn_mode!r}: model {model_config.name!r} has no '
                       'BatchNorm modes; leave it None.')
    return None
  return _bn_mode(model_config, spec.default_bn_mode)


def param_labels(model_config: ml_collections.ConfigDict, params: Any) -> Any:
  """A pytree like `params` of 'head' | 'backbone' | 'frozen', for per-group learning rates and freezing (the
  BatchNorm affine is 'frozen' in the 'batch' and 'frozen' BN modes)."""
  spec = get_model_spec(model_config.name)
  mode = bn_mode(model_config)
  return spec.param_labels(params) if mode is None else spec.param_labels(params, mode)


def get_discriminator(name: str, num_classes_or_channels: int, dtype: Any = 'float32',
                      downsample: bool = True) -> nn.Module:
  """'fc' (AdaptSegNet) or 'light' (depthwise-separable): [B, H, W, C] -> logits [B, H/32, W/32, 1] float32
  ([B, H, W, 1] with `downsample=False`, for inputs that are already small such as backbone features)."""
  if name not in discriminator.DISCRIMINATORS:
    raise ValueError(f'Unknown discriminator {name!r}; choose one of {sorted(discriminator.DISCRIMINATORS)}.')
  return discriminator.DISCRIMINATORS[name](num_classes_or_channels, downsample, get_dtype(dtype))


def load_pretrained(model_config: ml_collections.ConfigDict, variables: Any) -> Any:
  """Loads `model_config.pretrained` into the backbone of `variables` (see `pretrained.load_pretrained`)."""
  from rtda_jax.models import pretrained  # imported lazily: `python -m rtda_jax.models.pretrained` runs it
  return pretrained.load_pretrained(model_config, variables)


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def init_shapes(module: nn.Module, input_shape: tuple[int, ...], **kwargs: Any) -> Any:
  """Variables' shapes (no computation): jax.eval_shape of `module.init` on zeros of `input_shape`."""
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(input_shape, jnp.float32), **kwargs))


def parameter_counts(num_classes: int = 19) -> dict[str, int]:
  """Trainable parameter counts (BN running statistics excluded) of every model, for the results table."""
  image = (1, 64, 64, 3)

  def seg(name: str, multi_level: bool = False) -> nn.Module:
    return get_model(ml_collections.ConfigDict(dict(name=name, num_classes=num_classes, dtype='float32',
                                                    multi_level=multi_level)))

  modules = {
      'resnet18': (ResNet(18), image, {'train': False}),
      'resnet50': (ResNet(50), image, {'train': False}),
      'resnet101': (ResNet(101), image, {'train': False}),
      'bisenet': (seg('bisenet'), image, {'train': False}),
      'deeplabv2': (seg('deeplabv2'), image, {'train': False}),
      'deeplabv2_multi_level': (seg('deeplabv2', True), image, {'train': False}),
      'discriminator_fc': (get_discriminator('fc', num_classes), (1, 64, 64, num_classes), {}),
      'discriminator_light': (get_discriminator('light', num_classes), (1, 64, 64, num_classes), {}),
  }
  return {name: count_params(init_shapes(m, shape, **kw)['params']) for name, (m, shape, kw) in modules.items()}


def print_parameter_counts(num_classes: int = 19) -> None:
  """Prints `parameter_counts` as a Markdown table."""
  print('| model | parameters |\n| --- | ---: |')
  for name, n in parameter_counts(num_classes).items():
    print(f'| {name} | {n:,} |')


__all__ = [
    'BiSeNet', 'DeepLabV2', 'FCDiscriminator', 'MODELS', 'ModelSpec', 'ResNet', 'bn_mode', 'count_params',
    'get_discriminator',
    'get_dtype', 'get_model', 'get_model_spec', 'init_shapes', 'load_pretrained', 'param_labels',
    'parameter_counts', 'print_parameter_counts', 'register_model',
]
