"""GTA5 -> Cityscapes without adaptation: train on the labelled source, evaluate on the target.

Presets: `configs/source_only.py:bisenet` (default), `:deeplabv2`, `:paper` (DeepLab-v2: AdaptSegNet's recipe without
the discriminators; BiSeNet: the course recipe), `:course`, combinable (`:deeplabv2,paper`).
"""

from configs import common


def get_config(arg=None):
  config = common.get_base_config()
  config.name = 'source_only'
  config.method = 'supervised'
  config.data.source = 'gta5'
  config.data.target = 'cityscapes'
  return common.apply_presets(config, arg)
