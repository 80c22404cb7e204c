"""Adversarial output-space adaptation GTA5 -> Cityscapes (AdaptSegNet), the project's main command.

`python main.py --config=configs/adv.py` runs BiSeNet single-level adaptation on the embedded benchmark.
Presets (combinable with ','): `deeplabv2` (DeepLab-v2 ResNet-101), `multilevel` (discriminators on the main and
the auxiliary outputs), `feature` (discriminator on backbone features), `light` (depthwise-separable
discriminator), `ls` (least-squares GAN loss), `paper` (the real-time course setting on the real datasets).
"""

import ml_collections

from configs import common

ADV_PRESETS = ('multilevel', 'feature', 'light', 'ls')


def get_config(arg=None):
  config = common.get_base_config()
  config.name = 'adv'
  config.method = 'adversarial'
  config.data.source = 'gta5'
  config.data.target = 'cityscapes'

  config.adv = adv = ml_collections.ConfigDict()
  adv.level = 'single'  # single | multi | feature
  adv.discriminator = 'fc'  # fc (AdaptSegNet) | light (depthwise-separable)
  adv.gan = 'bce'  # bce | ls
  adv.lambda_adv = 0.001  # weight of the adversarial term on the main output (or the features)
  adv.lambda_adv_aux = 0.0002  # multi-level: weight on each auxiliary output
  adv.disc_learning_rate = 1e-4
  adv.disc_betas = (0.9, 0.99)
  adv.warmup_steps = 0  # segmentation-only steps before the adversarial term switches on

  presets = common.split_preset(arg)
  common.apply_presets(config, ','.join(p for p in presets if p not in ADV_PRESETS))
  for p in presets:
    if p == 'multilevel':
      adv.level = 'multi'
    elif p == 'feature':
      adv.level = 'feature'
    elif p == 'light':
      adv.discriminator = 'light'
    elif p == 'ls':
      adv.gan = 'ls'
  if 'paper' in presets:
    # The real-time course setting: crop 1024x512, batch 2, seg lr 2.5e-4 x batch, disc lr 1e-4 x batch.
    common.apply_realtime_course(config)
    adv.disc_learning_rate = 1e-4 * config.train.batch_size
  return config
