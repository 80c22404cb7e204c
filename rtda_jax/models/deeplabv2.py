"""DeepLab-v2 (ResNet-101, output stride 8, ASPP classifier) as used by AdaptSegNet / FDA / DACS.

The backbone is the caffe-style ResNet of those repositories and of their ImageNet/COCO init file
(`DeepLab_resnet_pretrained_init-f81d91e8.pth`): stride on the first 1x1 conv of a bottleneck, ceil-mode max
pool, layer3 dilation 2 and layer4 dilation 4 in every block. The classifier sums all four dilated 3x3 convs
(FDA's fix of AdaptSegNet's early `return`). Logits are upsampled bilinearly to the input size, with half pixel
centres (`align_corners=False`, default) or, as those repositories, `align_corners=True`.

BatchNorm (`bn_mode`, `norm.BN_MODES`): by default 'batch', what those repositories do (`requires_grad=False` on BN's
scale and bias, then `model.train()`): every training forward pass normalises with its batch's statistics, the
running statistics keep updating and serve at evaluation, the affine never moves (`param_labels` marks it 'frozen').
'frozen' uses the running statistics in training too (affine frozen); 'train' is ordinary BN (affine learned).
Under the data-parallel mesh the batch statistics are over the global batch of all devices (synchronised BN).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rtda_jax.models import classes
from rtda_jax.models.norm import affine_frozen, check_bn_mode
from rtda_jax.models.resize import resize_bilinear
from rtda_jax.models.resnet import ResNet

# Caffe convention of the DeepLab-v2 weights: BGR order, mean subtracted, no division by a std.
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
ASPP_DILATIONS = (6, 12, 18, 24)


def caffe_normalize(images: jnp.ndarray) -> jnp.ndarray:
  """[B, H, W, 3] 0..255 RGB -> BGR minus the caffe mean, float32."""
  bgr = images.astype(jnp.float32)[..., ::-1]
  return bgr - jnp.asarray(CAFFE_BGR_MEAN, jnp.float32)


class ASPPClassifier(nn.Module):
  """Sum of four 3x3 convs (dilations 6, 12, 18, 24, with bias) to num_classes: [B, h, w, C] -> [B, h, w, K].

  Convs are named '0'..'3' like AdaptSegNet's `conv2d_list`; weights ~ N(0, 0.01) as there.
  """
  num_classes: int
  dilations: tuple[int, ...] = ASPP_DILATIONS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    out = None
    for i, d in enumerate(self.dilations):
      y = nn.Conv(self.num_classes, (3, 3), padding=((d, d), (d, d)), kernel_dilation=(d, d), dtype=self.dtype,
                  param_dtype=jnp.float32, kernel_init=nn.initializers.normal(0.01), name=str(i))(x)
      out = y if out is None else out + y
    return out


class DeepLabV2(nn.Module):
  """DeepLab-v2. images [B, H, W, 3] 0..255 RGB.

  Returns {'logits': [B, H, W, K] float32, 'aux': (layer3 classifier logits [B, H, W, K],) if multi_level
  else (), 'features': [B, ~H/8, ~W/8, 2048] float32 (layer4)}. BN as `bn_mode` says (module docstring).
  """
  num_classes: int = 19
  output_ids: tuple[int, ...] | None = None  # classes.py: outputs for these train ids only, others ABSENT_LOGIT
  multi_level: bool = False
  backbone_depth: int = 101
  bn_mode: str = 'batch'  # norm.BN_MODES
  align_corners: bool = False  # of the bilinear upsampling of the logits to the input size
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool) -> dict[str, Any]:
    height, width = images.shape[1:3]
    x = caffe_normalize(images).astype(self.dtype)
    feats = ResNet(self.backbone_depth, output_stride=8, caffe_style=True, bn_mode=check_bn_mode(self.bn_mode),
                   dtype=self.dtype, name='backbone')(x, train)
    k = classes.num_outputs(self.num_classes, self.output_ids)
    head = lambda x: classes.expand(resize_bilinear(x.astype(jnp.float32), (height, width), self.align_corners),
                                    self.output_ids, self.num_classes)  # [B, H, W, K]
    logits = head(ASPPClassifier(k, dtype=self.dtype, name='classifier')(feats['layer4']))
    aux: tuple[jnp.ndarray, ...] = ()
    if self.multi_level:
      aux = (head(ASPPClassifier(k, dtype=self.dtype, name='classifier_aux')(feats['layer3'])),)
    return {'logits': logits, 'aux': aux, 'features': feats['layer4'].astype(jnp.float32)}


def param_labels(params: Any, bn_mode: str = 'batch') -> Any:
  """'head' for the classifiers (10x lr), 'backbone' for the backbone's convs, and for its BN scale/bias 'frozen'
  in 'batch' / 'frozen' mode, 'backbone' in 'train' mode."""
  bn_label = 'frozen' if affine_frozen(bn_mode) else 'backbone'

  def label(path: tuple[Any, ...], _: Any) -> str:
    if path[0].key != 'backbone':
      return 'head'
    return 'backbone' if path[-1].key == 'kernel' else bn_label  # backbone convs have no bias
  return jax.tree_util.tree_map_with_path(label, params)
