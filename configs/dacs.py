"""DACS (cross-domain mixed sampling with a mean teacher) GTA5 -> Cityscapes.

Presets: `configs/dacs.py:bisenet` (default, embedded benchmark), `:deeplabv2`, `:paper` (DeepLab-v2: DACS's recipe,
see common.apply_dacs_recipe: SGD lr 2.5e-4, batch 2, 512x512 random crops of GTA5 at 1280x720 and Cityscapes at
1024x512, 250k iterations, MS-COCO init; BiSeNet: the course recipe), `:course`, combinable (`:deeplabv2,paper`).

How this follows the reference code (vikolss/DACS at fc44a74: `trainUDA.py`, `configs/configUDA.json`, `utils/`),
where the paper's text is less precise:
- ClassMix picks ceil(n / 2) of the n values in `torch.unique(label)`; the line dropping the ignore label is
  commented out there (trainUDA.py l.426-430), so 255 counts as a class and its pixels can be pasted (they stay
  ignored in the loss): `dacs.ignore_is_class = True`. False leaves the ignore label out.
- Source i is pasted onto target i (DACS hard-codes a batch of 2 with this pairing); any batch size works here.
- The confidence weight ('threshold_uniform') is ONE number per step: the fraction of all the batch's target pixels
  whose max teacher probability is >= 0.968 (l.466-468). Pasted source pixels weigh 1 (l.474-478).
- The mixed loss is mean(weight * CE) over all pixels (ignored ones add 0; utils/loss.py l.35-43), weight
  `dacs.consistency_weight` = 1 (l.486).
- EMA: alpha = min(1 - 1 / (i + 1), 0.99) with i the 0-based index of the step just taken, so the first update copies
  the student (l.111-122, called after optimizer.step() at l.511). DACS averages `parameters()` only; the teacher's
  BatchNorm running statistics are its own and unused (it stays in train mode, l.265, and normalises each target
  batch with that batch's statistics). Here the teacher keeps an EMA of the student's running statistics too, and
  labels in eval mode (`dacs.teacher_bn = 'running'`); `'batch'` gives DACS's train-mode BatchNorm instead. (They agree
  only where BatchNorm ignores batch statistics: `model.bn_mode='frozen'`.)
- Strong augmentation of the mixed images: colour jitter p=0.8, Gaussian blur p=0.5 (`augment.PRESETS['strong']`).
  DACS draws the two on/off gates once per step for both images (l.444-450); here each image draws its own. No flip
  (configUDA.json "flip": false). Source images get `train.augment` ('none', as DACS); the target batch none.
- The auxiliary heads (BiSeNet) are trained on the source only; the mixed loss uses the main output.
"""

import ml_collections

from configs import common


def get_config(arg=None):
  config = common.get_base_config()
  config.name = 'dacs'
  config.method = 'dacs'
  config.recipe = 'dacs'
  config.data.source = 'gta5'
  config.data.target = 'cityscapes'

  config.dacs = d = ml_collections.ConfigDict()
  d.ema_alpha = 0.99  # the teacher's EMA rate once past the first steps (DACS alpha_teacher)
  d.confidence_threshold = 0.968  # max teacher probability of a confident pseudo-label
  d.pixel_weight = 'threshold_uniform'  # threshold_uniform (DACS) | threshold (per pixel 0/1) | none
  d.consistency_weight = 1.0  # weight of the mixed-image loss
  d.ignore_is_class = True  # ClassMix may choose the ignore label as one of the classes (DACS's code does)
  d.augment = 'strong'  # photometric augmentation of the mixed images (rtda_jax/augment.py)
  d.teacher_bn = 'running'  # running: teacher in eval mode with EMA statistics | batch: DACS's train-mode BatchNorm

  common.apply_presets(config, arg)
  common.apply_warm_start_demo(config)
  return config
