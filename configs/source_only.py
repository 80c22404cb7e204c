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
  common.apply_presets(config, arg)
  if config.scale == 'demo':  # the first stage of the demo: the run the adaptation configs start from
    config.train.num_steps = config.train.checkpoint_every_steps = config.eval.every_steps = common.DEMO_SOURCE_STEPS
  return config
