"""Supervised on Cityscapes (the oracle / preliminary analysis): train and evaluate on the target domain.

Presets: `configs/oracle.py:bisenet` (default), `:deeplabv2`, `:paper` (DeepLab-v2: AdaptSegNet's recipe without
the discriminators; BiSeNet: the course recipe), `:course`, combinable (`:deeplabv2,paper`).
"""

from configs import common


def get_config(arg=None):
  config = common.get_base_config()
  config.name = 'oracle'
  config.method = 'supervised'
  config.data.source = 'cityscapes'
  config.data.target = 'cityscapes'
  config.data.source_train_size = config.data.target_train_size
  return common.apply_presets(config, arg)
