"""Adversarial output-space adaptation GTA5 -> Cityscapes (AdaptSegNet), the project's main command.

`python main.py --config=configs/adv.py` runs the demo's two stages on the embedded benchmark: a BiSeNet source-only
model (runs/source_only, trained first if it is not there), then single-level adversarial adaptation from it; it
prints the target mIoU before and after. Presets (combinable with ','): `deeplabv2` (DeepLab-v2 ResNet-101),
`multilevel` (discriminators on the main and the auxiliary outputs; DeepLab-v2 gets its layer3 classifier with
AdaptSegNet's weights: lambda_seg 0.1, lambda_adv 0.0002 / 0.001), `feature` (discriminator on backbone features),
`light` (depthwise-separable discriminator), `ls` (least-squares GAN loss), `paper` (DeepLab-v2: AdaptSegNet's
recipe, see common.apply_adaptsegnet_recipe; BiSeNet: the course recipe), `course` (BiSeNet, the course recipe).
"""

from configs import common

ADV_PRESETS = ('multilevel', 'feature', 'light', 'ls')


def get_config(arg=None):
  config = common.get_base_config()
  config.name = 'adv'
  config.method = 'adversarial'
  config.recipe = 'adaptsegnet'
  config.data.source = 'gta5'
  config.data.target = 'cityscapes'
  config.adv = adv = common.adversarial_defaults()

  presets = common.split_preset(arg)
  common.apply_presets(config, arg, own=ADV_PRESETS)
  for p in presets:
    if p == 'multilevel':
      adv.level = 'multi'
    elif p == 'feature':
      adv.level = 'feature'
    elif p == 'light':
      adv.discriminator = 'light'
    elif p == 'ls':
      adv.gan = 'ls'
  if adv.level == 'multi' and config.model.name == 'deeplabv2':
    # AdaptSegNet's multi-level DeepLab: a layer3 classifier, its CE at lambda_seg = 0.1 (LAMBDA_SEG, l.51).
    config.model.multi_level = True
    config.train.aux_weight = 0.1
  if config.scale == 'paper':
    # AdaptSegNet: discriminators Adam 1e-4 (0.9, 0.99) with the same poly schedule; the course: 1e-4 x batch.
    course = config.model.name == 'bisenet' or 'course' in presets
    adv.disc_learning_rate = 1e-4 * (config.train.batch_size if course else 1)
  common.apply_warm_start_demo(config)
  return config
