"""Shared defaults for every experiment config. Each config file imports `get_base_config` and overrides fields.

Every number a run depends on lives here or in the config that overrides it; nowhere else.
"""

from __future__ import annotations

import ml_collections

# Preset names understood by every config: the model and the scale.
MODEL_PRESETS = ('bisenet', 'deeplabv2')
SCALE_PRESETS = ('demo', 'paper')


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = 'base'
  config.seed = 0
  config.method = 'supervised'
  config.num_devices = 0  # devices in the data-parallel mesh; 0 = every visible device
  config.jax_cache_dir = ''  # persistent XLA compilation cache; '' = <data.root>/jax_cache, 'none' = off

  # ---- data -------------------------------------------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  data.root = 'data'  # generated benchmark and built datasets live here (git-ignored)
  data.gta5_dir = ml_collections.FieldReference(None, field_type=str)  # raw GTA5 folder; None = embedded benchmark
  data.cityscapes_dir = ml_collections.FieldReference(None, field_type=str)  # raw Cityscapes folder; None = benchmark
  data.source = 'gta5'  # the labelled training domain ('gta5' or 'cityscapes')
  data.target = 'cityscapes'  # the domain evaluated on (and the unlabelled one for adaptation)
  # Resolution the TFDS builders store, [H, W]. The course settings: GTA5 720x1280, Cityscapes 512x1024.
  data.gta5_size = (128, 256)
  data.cityscapes_size = (128, 256)
  # Fixed training shape [H, W] each domain is resized / cropped to before batching.
  data.source_train_size = (128, 256)
  data.target_train_size = (128, 256)
  data.resize_mode = 'resize'  # 'resize' (whole image to the training shape) or 'crop' (random crop of that shape)
  data.num_workers = 2  # grain worker processes per pipeline (0 = in the main process)
  data.prefetch = 2
  data.eval_batch_size = 8
  # Rare-class sampling (DAFormer's RCS) of the source domain: class c with p ~ exp((1 - f_c) / T), then an image
  # holding at least `min_pixels` pixels of c (DAFormer: 3000 at GTA5's 1914x1052; scaled with the stored size
  # when 0).
  data.rcs = rcs = ml_collections.ConfigDict()
  rcs.enabled = False
  rcs.temperature = 0.01
  rcs.min_pixels = 0  # 0 = 3000 x (stored pixels / 1914x1052 pixels), rounded

  # The embedded benchmark: procedurally generated two-domain street scenes (rtda_jax/data/synthetic.py).
  data.synthetic = syn = ml_collections.ConfigDict()
  syn.seed = 1234
  syn.gta5_size = (128, 256)  # [H, W] of generated source images
  syn.cityscapes_size = (128, 256)  # [H, W] of generated target images
  syn.num_gta5 = 1200
  syn.num_cityscapes_train = 1000
  syn.num_cityscapes_val = 200
  syn.target_style = 'cityscapes'  # renderer style of the target domain (see synthetic.STYLES)

  # ---- model ------------------------------------------------------------------------------------------------
  config.model = model = ml_collections.ConfigDict()
  model.name = 'bisenet'
  model.num_classes = 19
  model.dtype = 'float32'  # computation dtype: float32 or bfloat16 (parameters stay float32)
  model.pretrained = ml_collections.FieldReference(None, field_type=str)  # .npz / .safetensors / .pth; None = random
  model.multi_level = False  # DeepLab-v2: second classifier on layer3
  # BatchNorm: 'train' (batch statistics in training, affine learned), 'batch' (batch statistics in training, affine
  # frozen, running statistics updated: AdaptSegNet/FDA/DACS's DeepLab-v2), 'frozen' (running statistics always,
  # affine frozen); None = the model's default (BiSeNet 'train', DeepLab-v2 'batch').
  model.bn_mode = ml_collections.FieldReference(None, field_type=str)
  model.align_corners = False  # upsampling of the logits to the input size (the DeepLab-v2 references: True)
  # Warm start: WORKDIR[:best|last|STEP] of any earlier run; its segmentation variables (not its optimiser or step)
  # initialise this run. None = random / `pretrained` initialisation.
  model.init_from = ml_collections.FieldReference(None, field_type=str)
  model.allow_random_init = False  # `paper` presets stop without `pretrained` / `init_from` unless this is True

  # ---- training ---------------------------------------------------------------------------------------------
  config.train = train = ml_collections.ConfigDict()
  # The demo scale: one schedule for every method (batch 4 per domain, 200 steps), so the rows of the results
  # table are comparable; the slowest method (adversarial) runs generate + build + train + evaluate in about 10
  # minutes on 2 CPU cores, a supervised run in about 5.
  train.num_steps = 200
  train.batch_size = 4  # global batch per domain (split over all devices)
  train.optimizer = 'sgd'
  train.learning_rate = 2.5e-2
  train.head_lr_mult = 1.0  # DeepLab-v2 uses 10x on the classifier
  train.momentum = 0.9
  train.weight_decay = 1e-4
  train.poly_power = 0.9
  train.warmup_steps = 0
  train.loss = 'ce'  # ce | ohem | focal | ce_focal | dice
  train.aux_weight = 1.0  # weight of each auxiliary head's loss
  train.augment = 'none'  # a preset ('none', 'light', 'strong') or comma-separated op names (rtda_jax/augment.py)
  train.log_every_steps = 10
  train.checkpoint_every_steps = 200
  train.max_checkpoints = 2
  train.stop_after_steps = 0  # >0: checkpoint and stop after this many steps of this invocation (job time slots)

  # ---- evaluation -------------------------------------------------------------------------------------------
  config.eval = ev = ml_collections.ConfigDict()
  ev.every_steps = 200
  ev.split = 'val'
  ev.flip = False  # test-time augmentation: average with the horizontally flipped image
  ev.scales = (1.0,)  # test-time augmentation: multi-scale
  ev.num_prediction_images = 4
  ev.checkpoint = ml_collections.FieldReference(None, field_type=int)  # --mode=evaluate: step to load (None = last)
  # How images are fed and scored: 'stored' (the stored val images, scored at the stored label size), 'adaptsegnet'
  # (AdaptSegNet / FDA: image at eval.input_size, prediction upsampled to the full label resolution), 'dacs'
  # (image and labels at eval.input_size). See rtda_jax/evaluate.py.
  ev.protocol = 'stored'
  ev.input_size = (512, 1024)  # [H, W] the image is fed at by the 'adaptsegnet' and 'dacs' protocols
  ev.align_corners = False  # upsampling of the prediction to the scored size (the DeepLab-v2 references: True)

  # ---- benchmark (--mode=benchmark) ---------------------------------------------------------------------------
  config.benchmark = bench = ml_collections.ConfigDict()
  bench.resolutions = ()  # [(H, W), ...]; empty = device default (GPU 512x1024, CPU a small one)
  bench.dtypes = ()  # empty = device default
  bench.batch_sizes = ()
  bench.num_runs = 0  # 0 = device default
  bench.models = ()  # model names; empty = device default (GPU: bisenet and deeplabv2; CPU: config.model.name)
  bench.methods = ('supervised', 'adversarial')  # training steps to time; () = forward only
  bench.train_batch_size = 0  # per domain; 0 = train.batch_size (at most 2 on CPU)

  return config


def split_preset(arg: str | None) -> list[str]:
  """'bisenet,paper' or 'bisenet:paper' -> ['bisenet', 'paper']."""
  if not arg:
    return []
  return [p for p in arg.replace(':', ',').split(',') if p]


# Images in the real datasets' training splits, to turn epochs into steps for the paper presets.
REAL_TRAIN_IMAGES = {'gta5': 24966, 'cityscapes': 2975}


def apply_model_preset(config: ml_collections.ConfigDict, name: str) -> None:
  """The model preset: BiSeNet (ResNet-18) or DeepLab-v2 (ResNet-101) with their reference optimiser settings."""
  config.model.name = name
  if name == 'bisenet':
    config.train.learning_rate = 2.5e-2
    config.train.weight_decay = 1e-4
    config.train.head_lr_mult = 1.0
  elif name == 'deeplabv2':
    config.train.learning_rate = 2.5e-4
    config.train.weight_decay = 5e-4
    config.train.head_lr_mult = 10.0
  else:
    raise ValueError(f'Unknown model preset {name!r}; choose one of {MODEL_PRESETS}.')


def apply_scale_preset(config: ml_collections.ConfigDict, name: str) -> None:
  """The scale preset: 'demo' (embedded benchmark, CPU) or 'paper' (course settings on the real datasets)."""
  if name == 'demo':
    return  # the base config is the demo scale
  if name != 'paper':
    raise ValueError(f'Unknown scale preset {name!r}; choose one of {SCALE_PRESETS}.')
  data = config.data
  data.gta5_size = (720, 1280)
  data.cityscapes_size = (512, 1024)
  data.source_train_size = (720, 1280) if data.source == 'gta5' else (512, 1024)
  data.target_train_size = (512, 1024)
  data.num_workers = 8
  config.train.batch_size = 8
  epochs = 50
  config.train.num_steps = epochs * REAL_TRAIN_IMAGES[data.source] // config.train.batch_size
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 2000
  config.eval.every_steps = 5000


def apply_realtime_course(config: ml_collections.ConfigDict) -> None:
  """The real-time adaptation course setting (after `paper`): random 512x1024 crops of both domains, batch 2,
  segmentation lr 2.5e-4 x batch, 50 epochs of GTA5."""
  config.train.batch_size = 2
  config.data.resize_mode = 'crop'
  config.data.source_train_size = (512, 1024)
  config.data.target_train_size = (512, 1024)
  config.train.learning_rate = 2.5e-4 * config.train.batch_size
  config.train.num_steps = 50 * REAL_TRAIN_IMAGES['gta5'] // config.train.batch_size


def apply_presets(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies 'model[,scale]' presets (either order, ':' or ',' separated). Returns the config."""
  for preset in split_preset(arg):
    if preset in MODEL_PRESETS:
      apply_model_preset(config, preset)
    elif preset in SCALE_PRESETS:
      apply_scale_preset(config, preset)
    else:
      raise ValueError(f'Unknown preset {preset!r} for config {config.name!r}; known: '
                       f'{MODEL_PRESETS + SCALE_PRESETS}.')
  return config
