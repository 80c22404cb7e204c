"""Image-level adaptation GTA5 -> Cityscapes with a learned translator: CycleGAN with CyCADA's semantic consistency.

`python main.py --config=configs/translate.py` trains the translator on the embedded benchmark at the demo scale
(64x128 crops, ngf 16, 3 residual blocks, 200 steps); its semantic loss runs the frozen source-only model
`translate.init_from` (default runs/source_only: train it first with `python main.py --config=configs/source_only.py`,
or any adaptation demo trains it). Then `python main.py --config=configs/translate.py --mode=translate` writes the
translated source split as a GTA5-layout folder (`translate.output_dir`, default <workdir>/translated_gta5), which
every config trains on with `--config.data.gta5_dir=<that folder>`.

Presets (combinable with ','):
- `nosem`: plain CycleGAN (no semantic loss, no frozen net needed).
- `semtarget`: also CyCADA's target-direction semantic term (the frozen net's own target labels kept by G_ts).
- `paper`: CycleGAN's defaults (models/networks.py, options/): ngf = ndf = 64, 9 residual blocks, 3-layer 70x70
  PatchGAN, batch 1, 256x256 random crops, Adam 2e-4 (0.5, 0.999), 100 epochs at the base rate then 100 of linear
  decay, an epoch being max(|GTA5|, |Cityscapes|) = 24966 images as the unaligned dataset counts it; images stored at
  width 1024 (GTA5 562x1024, Cityscapes 512x1024), as CyCADA's train_gta2cityscapes.sh scales them (`scale_width`).
- `cycada` (with `paper`): CyCADA's train_gta2cityscapes.sh: 400x400 crops, identity weight 1.0.
- `bisenet` / `deeplabv2`: the architecture of the frozen segmentation net (that of the `translate.init_from` run).
"""

import ml_collections

from configs import common

TRANSLATE_PRESETS = ('nosem', 'semtarget', 'paper', 'cycada')
CYCLEGAN_EPOCHS = (100, 100)  # CycleGAN's n_epochs (base rate) and n_epochs_decay (linear decay to 0)


def translate_defaults() -> ml_collections.ConfigDict:
  """CycleGAN's reference settings (`config.translate`) at the demo's network sizes."""
  t = ml_collections.ConfigDict()
  t.ngf = 16  # generator width (CycleGAN: 64)
  t.num_blocks = 3  # residual blocks (CycleGAN: 9 at 256 px, 6 at 128 px)
  t.upsample = 'transpose'  # 'transpose' (the reference's fractionally-strided conv) | 'resize' (bilinear + conv)
  t.ndf = 16  # discriminator width (CycleGAN: 64)
  t.disc_layers = 3  # PatchGAN stride-2 layers: 3 = 70x70 patches
  t.gan = 'ls'  # 'ls' (LSGAN, CycleGAN's default) | 'bce'
  t.cycle_weight = 10.0  # lambda_A = lambda_B
  t.identity_weight = 0.5  # x cycle_weight (lambda_identity)
  t.semantic_weight = 1.0  # CE of the frozen net on G_st(x_s) against the source labels (CyCADA's loss_sem_AB)
  t.semantic_target_weight = 0.0  # CE of the frozen net on G_ts(x_t) against its labels of x_t (loss_sem_BA)
  t.learning_rate = 2e-4  # both generators
  t.disc_learning_rate = 2e-4  # both discriminators
  t.betas = (0.5, 0.999)
  t.constant_steps = 100  # steps at the base rate ...
  t.decay_steps = 100  # ... then linear decay towards 0 (CycleGAN's 'linear' policy)
  t.pool_size = 50  # history of fakes per discriminator; 0 = none
  # t.init_from: the frozen segmentation net (WORKDIR[:best|last|STEP] of a source-only run); get_config makes it
  # the same field as model.init_from, through which the trainer loads it (a warm start of `state.seg`).
  # --mode=translate: the output folder (None = <workdir>/translated_gta5) and the size the generator runs at:
  # 'stored' (each raw image resized to data.gta5_size as the builder stores it, translated, resized back to its
  # raw size so that the copied label still fits) or 'raw' (at the raw size, padded to a multiple of 4).
  t.output_dir = ml_collections.FieldReference(None, field_type=str)
  t.inference_size = 'stored'
  t.num_sample_images = 3  # original | translated strips written to <workdir>/translate_samples/
  return t


def get_config(arg=None):
  config = common.get_base_config()
  config.name = 'translate'
  config.method = 'translate'
  config.data.source = 'gta5'
  config.data.target = 'cityscapes'
  config.translate = t = translate_defaults()
  t.init_from = config.model.get_ref('init_from')  # one value: --config.translate.init_from sets both
  config.model.allow_random_init = True  # the segmentation net is not trained here; init_from is checked instead

  presets = common.split_preset(arg)
  unknown = [p for p in presets if p not in TRANSLATE_PRESETS + common.MODEL_PRESETS]
  if unknown:
    raise common.errors.ConfigError(f'Unknown preset {unknown[0]!r} for config \'translate\'; its presets: '
                                    f'{", ".join(TRANSLATE_PRESETS + common.MODEL_PRESETS)}.')
  if 'cycada' in presets and 'paper' not in presets:
    raise common.errors.ConfigError('Preset `cycada` changes the `paper` preset: use '
                                    'configs/translate.py:paper,cycada.')
  for p in presets:
    if p in common.MODEL_PRESETS:
      common.apply_model_preset(config, p)

  data, train = config.data, config.train
  data.resize_mode = 'crop'  # CycleGAN trains on random crops at the stored scale
  train.augment = 'hflip'  # CycleGAN flips (no_flip=False)
  train.checkpoint_every_steps = 100
  if 'paper' in presets:
    config.scale = 'paper'
    data.gta5_size, data.cityscapes_size = (562, 1024), (512, 1024)  # scale_width 1024 (GTA5 1914x1052)
    data.source_train_size = data.target_train_size = (256, 256)
    data.num_workers = 8
    train.batch_size = 1
    t.ngf = t.ndf = 64
    t.num_blocks = 9
    epoch = max(common.REAL_TRAIN_IMAGES['gta5'], common.REAL_TRAIN_IMAGES['cityscapes'])  # unaligned: max(A, B)
    t.constant_steps, t.decay_steps = (n * epoch // train.batch_size for n in CYCLEGAN_EPOCHS)
    train.log_every_steps, train.checkpoint_every_steps = 100, 5000
    if 'cycada' in presets:
      data.source_train_size = data.target_train_size = (400, 400)  # fineSize 400
      t.identity_weight = 1.0  # --lambda_identity 1.0
  else:  # the demo: the embedded benchmark's 128x256 images, 64x128 crops
    data.source_train_size = data.target_train_size = (64, 128)
    train.batch_size = 2
    config.model.init_from = common.demo_source_workdir(config.model)  # trained by configs/source_only.py
  train.num_steps = t.constant_steps + t.decay_steps
  config.eval.every_steps = train.num_steps  # unused: the trainer does not evaluate a translator
  if 'nosem' in presets:
    t.semantic_weight = t.semantic_target_weight = 0.0
    config.model.init_from = None
  if 'semtarget' in presets:
    t.semantic_target_weight = 1.0
  return config
