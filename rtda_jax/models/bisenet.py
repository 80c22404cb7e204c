"""BiSeNet v1 with a ResNet-18 context path, in the ooooverflow/BiSeNet lineage that course projects use.

Submodule names follow that code (`attention_refinement_module1`, `feature_fusion_module`, `supervision1`, ...)
except its `saptial_path` typo. As in its forward pass, the attention refinement modules apply no BatchNorm
(pool -> 1x1 conv -> sigmoid). Upsampling is bilinear, no transposed convolutions: with half pixel centres
(PyTorch's align_corners=False, as that code) inside the network; the upsamplings to the input size (main output
and auxiliary heads) follow `align_corners` (default False; True maps the corner pixels onto each other).

BatchNorm: `norm.BatchNorm` (PyTorch's arithmetic) everywhere. `bn_mode` (`norm.BN_MODES`, default 'train') applies
to the ResNet context path, the part that starts from ImageNet weights: 'batch' freezes its BN scale/bias
(`param_labels`), 'frozen' also normalises it with its running statistics in training. The spatial path and the
fusion module, trained from scratch, always use ordinary BN. Under the data-parallel mesh the batch statistics are
over the global batch of all devices (synchronised BN).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rtda_jax.models import classes
from rtda_jax.models.norm import affine_frozen, check_bn_mode
from rtda_jax.models.resize import resize_bilinear
from rtda_jax.models.resnet import ResNet, batch_norm

# torchvision's ImageNet statistics, for inputs in 0..255 RGB.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def imagenet_normalize(images: jnp.ndarray) -> jnp.ndarray:
  """[B, H, W, 3] 0..255 RGB -> ImageNet-normalised float32."""
  images = images.astype(jnp.float32)
  return (images - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def _conv(features: int, kernel: int, stride: int, padding: int, dtype: Any, name: str) -> nn.Conv:
  """A PyTorch-default Conv2d (with bias) with explicit padding."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((padding, padding),) * 2,
                 dtype=dtype, param_dtype=jnp.float32, name=name)


class ConvBlock(nn.Module):
  """Conv (with bias) + BN + ReLU."""
  features: int
  kernel: int = 3
  stride: int = 2
  padding: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    x = _conv(self.features, self.kernel, self.stride, self.padding, self.dtype, 'conv1')(x)
    return nn.relu(batch_norm(train, 'train', self.dtype, name='bn')(x))


class SpatialPath(nn.Module):
  """Three 3x3 stride-2 ConvBlocks, 64 -> 128 -> 256 channels: [B, H, W, 3] -> [B, H/8, W/8, 256]."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    for i, features in enumerate((64, 128, 256), start=1):
      x = ConvBlock(features, dtype=self.dtype, name=f'convblock{i}')(x, train)
    return x


class AttentionRefinementModule(nn.Module):
  """x * sigmoid(conv1x1(global_avg_pool(x))): [B, h, w, C] -> [B, h, w, C]."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    att = jnp.mean(x, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    att = nn.sigmoid(_conv(x.shape[-1], 1, 1, 0, self.dtype, 'conv')(att))
    return x * att


class FeatureFusionModule(nn.Module):
  """Concat -> ConvBlock(3x3) to num_classes -> channel attention; out = f * att + f. [B, h, w, num_classes]."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, spatial: jnp.ndarray, context: jnp.ndarray, train: bool) -> jnp.ndarray:
    x = jnp.concatenate([spatial, context], axis=-1)  # [B, h, w, 1024] with ResNet-18
    feature = ConvBlock(self.num_classes, stride=1, dtype=self.dtype, name='convblock')(x, train)
    att = jnp.mean(feature, axis=(1, 2), keepdims=True)  # [B, 1, 1, num_classes]
    att = nn.relu(_conv(self.num_classes, 1, 1, 0, self.dtype, 'conv1')(att))
    att = nn.sigmoid(_conv(self.num_classes, 1, 1, 0, self.dtype, 'conv2')(att))
    return feature * att + feature


class BiSeNet(nn.Module):
  """BiSeNet v1. images [B, H, W, 3] 0..255 RGB, H and W multiples of 32.

  Returns {'logits': [B, H, W, K] float32, 'aux': (two [B, H, W, K] float32) if train else (),
  'features': [B, H/32, W/32, 512] float32 (ResNet layer4)}.
  """
  num_classes: int = 19
  output_ids: tuple[int, ...] | None = None  # classes.py: outputs for these train ids only, others ABSENT_LOGIT
  backbone_depth: int = 18
  bn_mode: str = 'train'  # norm.BN_MODES, of the context path
  align_corners: bool = False  # of the bilinear upsamplings to the input size
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool) -> dict[str, Any]:
    height, width = images.shape[1:3]
    if height % 32 or width % 32:
      raise ValueError(f'BiSeNet needs an input height and width that are multiples of 32, got {height}x{width}.')
    x = imagenet_normalize(images).astype(self.dtype)

    spatial = SpatialPath(self.dtype, name='spatial_path')(x, train)  # [B, H/8, W/8, 256]
    feats = ResNet(self.backbone_depth, bn_mode=check_bn_mode(self.bn_mode), dtype=self.dtype,
                   name='context_path')(x, train)
    cx1 = AttentionRefinementModule(self.dtype, name='attention_refinement_module1')(feats['layer3'])  # 1/16
    tail = jnp.mean(feats['layer4'], axis=(1, 2), keepdims=True)  # [B, 1, 1, 512]
    cx2 = AttentionRefinementModule(self.dtype, name='attention_refinement_module2')(feats['layer4']) * tail
    size8 = spatial.shape[1:3]
    cx1 = resize_bilinear(cx1, size8)  # [B, H/8, W/8, 256]
    cx2 = resize_bilinear(cx2, size8)  # [B, H/8, W/8, 512]
    context = jnp.concatenate([cx1, cx2], axis=-1)

    k = classes.num_outputs(self.num_classes, self.output_ids)
    expand = lambda x: classes.expand(x.astype(jnp.float32), self.output_ids, self.num_classes)
    fused = FeatureFusionModule(k, self.dtype, name='feature_fusion_module')(spatial, context, train)
    fused = resize_bilinear(fused, (height, width), self.align_corners)  # [B, H, W, k]
    logits = expand(_conv(k, 1, 1, 0, self.dtype, 'conv')(fused))

    aux: tuple[jnp.ndarray, ...] = ()
    if train or self.is_initializing():  # the heads' parameters exist in every mode
      aux = tuple(
          expand(resize_bilinear(_conv(k, 1, 1, 0, self.dtype, f'supervision{i}')(c), (height, width),
                                 self.align_corners))
          for i, c in ((1, cx1), (2, cx2)))
    return {'logits': logits, 'aux': aux if train else (), 'features': feats['layer4'].astype(jnp.float32)}


def param_labels(params: Any, bn_mode: str = 'train') -> Any:
  """'backbone' for the ResNet context path, 'head' for everything else; in 'batch' / 'frozen' mode the context
  path's BN scale/bias are 'frozen'."""
  frozen_bn = affine_frozen(bn_mode)

  def label(path: tuple[Any, ...], _: Any) -> str:
    if path[0].key != 'context_path':
      return 'head'
    return 'frozen' if frozen_bn and path[-1].key != 'kernel' else 'backbone'  # ResNet convs have no bias
  return jax.tree_util.tree_map_with_path(label, params)
