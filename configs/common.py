"""Shared defaults for every experiment config. Each config file imports `get_base_config` and overrides fields.

Every number a run depends on lives here or in the config that overrides it; nowhere else.
"""

from __future__ import annotations

import difflib

import ml_collections

from rtda_jax import errors

# Preset names understood by every config: the model, the scale and the source domain.
MODEL_PRESETS = ('bisenet', 'deeplabv2')
SCALE_PRESETS = ('demo', 'paper', 'course')
# `synthia`: SYNTHIA-RAND-CITYSCAPES (or the embedded benchmark's SYNTHIA-like domain) as the labelled source, set
# before the scale preset so that `paper` / `course` take SYNTHIA's sizes (e.g. `adv.py:deeplabv2,paper,synthia`).
SOURCE_PRESETS = ('synthia',)


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = 'base'
  config.seed = 0
  config.seed_offset = 0  # added to seed for initialisation and data order (the MBT members' distinct runs)
  config.scale = 'demo'  # 'demo' (embedded benchmark, CPU) or 'paper' (set by the paper / course presets)
  config.recipe = 'adaptsegnet'  # the reference recipe `paper` applies to DeepLab-v2 (configs set their own)
  config.method = 'supervised'
  config.num_devices = 0  # devices in the data-parallel mesh; 0 = every visible device
  config.jax_cache_dir = ''  # persistent XLA compilation cache; '' = <data.root>/jax_cache, 'none' = off

  # ---- data -------------------------------------------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  data.root = 'data'  # generated benchmark and built datasets live here (git-ignored)
  data.gta5_dir = ml_collections.FieldReference(None, field_type=str)  # raw GTA5 folder; None = embedded benchmark
  data.cityscapes_dir = ml_collections.FieldReference(None, field_type=str)  # raw Cityscapes folder; None = benchmark
  data.synthia_dir = ml_collections.FieldReference(None, field_type=str)  # raw SYNTHIA-RAND-CITYSCAPES; None: benchm.
  # The labelled training domain: 'gta5', 'synthia' (19 outputs, terrain/truck/train ignored; evaluated over 16 / 13
  # classes) or 'cityscapes' (the oracle). `--config.data.source=synthia` works for every config; at the `paper` /
  # `course` scale use the `synthia` preset instead, which also sets the SYNTHIA training sizes of the recipe.
  data.source = 'gta5'
  data.target = 'cityscapes'  # the domain evaluated on (and the unlabelled one for adaptation)
  # Resolution the TFDS builders store, [H, W]. The course settings: GTA5 720x1280, Cityscapes 512x1024.
  data.gta5_size = (128, 256)
  data.cityscapes_size = (128, 256)
  data.synthia_size = (128, 256)  # real SYNTHIA-RAND-CITYSCAPES is 760x1280
  # Fixed training shape [H, W] each domain is resized / cropped to before batching.
  data.source_train_size = (128, 256)
  data.target_train_size = (128, 256)
  data.resize_mode = 'resize'  # 'resize' (whole image to the training shape) or 'crop' (random crop of that shape)
  data.num_workers = 2  # grain worker processes per pipeline (0 = in the main process)
  data.prefetch = 2
  data.eval_batch_size = 8
  # Raw label ids that are neither in the dataset's id table nor an ignore value: 'error' (prepare stops, naming the
  # file and the ids) or 'ignore' (they become 255 on purpose).
  data.unknown_label_ids = 'error'
  # Rare-class sampling (DAFormer's RCS) of the source domain: class c with p ~ exp((1 - f_c) / T), then an image
  # holding more than `min_pixels` pixels of c (DAFormer: 3000 at GTA5's 1914x1052; scaled with the stored size
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
  syn.synthia_size = (128, 256)  # [H, W] of generated SYNTHIA-like images (written only when data.source is synthia)
  syn.num_synthia = 1200
  syn.num_cityscapes_train = 1000
  syn.num_cityscapes_val = 200
  syn.target_style = 'cityscapes'  # renderer style of the target domain (see synthetic.STYLES)

  # ---- model ------------------------------------------------------------------------------------------------
  config.model = model = ml_collections.ConfigDict()
  model.name = 'bisenet'
  model.num_classes = 19
  # The classes the classifier has outputs for: 'all', or 'synthia16' (SYNTHIA's 16, as 16-class SYNTHIA models;
  # terrain, truck and train labels then ignored in training and evaluation). rtda_jax/models/classes.py.
  model.output_classes = 'all'
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
  model.init_steps = 0  # >0: when init_from names a run without checkpoints, train it first (source-only, N steps)
  model.allow_random_init = False  # `paper` presets stop without `pretrained` / `init_from` unless this is True
  model.pretrained_hint = ''  # the weight file a `paper` preset expects (set by the presets; shown in the error)

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
  train.schedule_steps = 0  # horizon T of the poly decay (references decay over T, stop at num_steps); 0 = num_steps
  train.warmup_steps = 0
  train.loss = 'ce'  # ce | ohem | focal | ce_focal | dice
  train.aux_weight = 1.0  # weight of each auxiliary head's loss
  train.augment = 'none'  # a preset ('none', 'light', 'strong') or comma-separated op names (rtda_jax/augment.py)
  train.log_every_steps = 10
  train.checkpoint_every_steps = 200
  train.max_checkpoints = 2
  train.stop_after_steps = 0  # >0: checkpoint and stop after this many steps of this invocation (job time slots)
  # Resume from this kept step of checkpoints/last (later ones are moved to checkpoints/set_aside/); None = the
  # newest. For a damaged newest checkpoint or a diverged run: pass it once, not in a requeued job script.
  train.resume_step = ml_collections.FieldReference(None, field_type=int)

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
  # Classes the means average over: 'all' (every class), 'synthia16' (SYNTHIA -> Cityscapes: mIoU over the 16 shared
  # classes and mIoU* over 13, without wall, fence, pole), 'auto' = 'synthia16' when data.source is 'synthia'.
  ev.class_set = 'auto'

  # ---- benchmark (--mode=benchmark) ---------------------------------------------------------------------------
  config.benchmark = bench = ml_collections.ConfigDict()
  bench.resolutions = ()  # [(H, W), ...]; empty = device default (GPU 512x1024, CPU a small one)
  bench.dtypes = ()  # empty = device default
  bench.batch_sizes = ()
  bench.num_runs = 0  # 0 = device default
  bench.models = ()  # model names; empty = device default (GPU: bisenet and deeplabv2; CPU: config.model.name)
  bench.methods = ('supervised', 'adversarial')  # training steps to time; () = forward only
  bench.train_batch_size = 0  # per domain; 0 = train.batch_size (at most 2 on CPU)
  bench.adv = adversarial_defaults()  # the adversarial step's settings where the config has no `adv`

  # ---- Frechet distance (--mode=fid): two image sets through one feature network (rtda_jax/fid.py) -------------
  config.fid = fd = ml_collections.ConfigDict()
  fd.a = 'source:train'  # an image set: '<source|target|gta5|cityscapes>:<split>' or a folder of images (recursive)
  fd.b = 'target:train'
  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or it converted to .npz): FID's Inception-v3 pool3 features.
  # None: the features of the run `feature_workdir` (not comparable with published FID). Nothing is downloaded.
  fd.inception_weights = ml_collections.FieldReference(None, field_type=str)
  fd.feature_workdir = DEMO_SOURCE_WORKDIR  # WORKDIR[:best|last|STEP] whose segmentation net gives the features
  fd.image_size = ()  # [H, W] images are resized to for that network; () = data.target_train_size (Inception: 299)
  fd.batch_size = 16  # images per forward pass (a multiple of the devices in use)
  fd.max_images = 0  # at most this many images of each set, in order; 0 = all

  # ---- predict (--mode=predict): a run's model on own images / a video (rtda_jax/predict.py) ------------------
  config.predict = pred = ml_collections.ConfigDict()
  pred.input = ''  # an image, a folder of images (recursive) or a video file
  pred.output = ''  # output folder; '' = <workdir>/predict
  pred.checkpoint = 'best'  # 'best' | 'last' | a step
  pred.resize = 'pad'  # 'pad': full size, zero-padded to pad_multiple and cropped back; 'resize': to `size` and back
  pred.size = ()  # [H, W] the network sees under 'resize'; () = data.<target>_size (what the run evaluated at)
  pred.pad_multiple = 32  # BiSeNet downsamples 32x
  pred.batch_size = 4  # images of one size per forward pass
  pred.alpha = 0.5  # opacity of the colour mask in the overlays
  pred.write = 'color,overlay,trainIds,labelIds'  # which outputs (a video: MP4s of color / overlay)
  pred.fps = 0.0  # frame rate of the output videos; 0 = the input's

  # ---- export (--mode=export): the eval forward pass as StableHLO or ONNX (rtda_jax/export.py) -----------------
  config.export = exp = ml_collections.ConfigDict()
  exp.format = 'stablehlo'  # 'stablehlo' (jax.export) | 'onnx' (jax2onnx, optional)
  exp.output = 'softmax'  # 'softmax' (probabilities [B, H, W, K]) | 'argmax' (train ids [B, H, W])
  exp.checkpoint = 'best'  # 'best' | 'last' | a step
  exp.input_size = ()  # [H, W] of the exported input; () = data.<target>_size; the batch is symbolic
  exp.platforms = ('cpu', 'cuda')  # StableHLO lowered for these (jax.export platforms)

  return config


def adversarial_defaults() -> ml_collections.ConfigDict:
  """AdaptSegNet's settings (`config.adv`): configs/adv.py uses them, and --mode=benchmark times the adversarial
  step with them (`config.benchmark.adv`) when a config has no `adv` of its own."""
  adv = ml_collections.ConfigDict()
  adv.level = 'single'  # single | multi | feature
  adv.discriminator = 'fc'  # fc (AdaptSegNet) | light (depthwise-separable)
  adv.gan = 'bce'  # bce | ls
  adv.lambda_adv = 0.001  # weight of the adversarial term on the main output (or the features)
  adv.lambda_adv_aux = 0.0002  # multi-level: weight on each auxiliary output
  adv.disc_learning_rate = 1e-4
  adv.disc_betas = (0.9, 0.99)
  adv.warmup_steps = 0  # segmentation-only steps before the adversarial term switches on
  return adv


def split_preset(arg: str | None) -> list[str]:
  """'bisenet,paper' or 'bisenet:paper' -> ['bisenet', 'paper']."""
  if not arg:
    return []
  return [p for p in arg.replace(':', ',').split(',') if p]


# Images in the real datasets' training splits, to turn epochs into steps for the course preset.
REAL_TRAIN_IMAGES = {'gta5': 24966, 'cityscapes': 2975, 'synthia': 9400}
# [H, W] each source's real images are stored at by the reference recipes: GTA5 resized to 1280x720, SYNTHIA to
# 1280x760 (AdaptSegNet's paper, Sec. 5.2; FDA data/__init__.py l.10 image_sizes; DAFormer's synthia config),
# Cityscapes to 1024x512.
REAL_STORED_SIZE = {'gta5': (720, 1280), 'synthia': (760, 1280), 'cityscapes': (512, 1024)}

# Initial weights the `paper` / `course` presets expect in model.pretrained (see README "Initial weights"). The
# checksum is the one published in each file's name (torch.hub's convention: the first 8 hex digits of its SHA-256).
PRETRAINED_WEIGHTS = {
    'resnet18': 'resnet18-f37072fd.pth (torchvision ImageNet ResNet-18, 44.7 MB)',
    'resnet101': 'resnet101-63fe2227.pth (torchvision ImageNet ResNet-101, 170.5 MB)',
    'deeplab_imagenet': 'DeepLab_resnet_pretrained_init-f81d91e8.pth (the DeepLab-v2 init of AdaptSegNet and FDA)',
    'deeplab_coco': 'resnet101COCO-41f33a49.pth (the MS-COCO DeepLab-v2 init of DACS)',
}


def apply_model_preset(config: ml_collections.ConfigDict, name: str) -> None:
  """The model preset: BiSeNet (ResNet-18) or DeepLab-v2 (ResNet-101) with their reference optimiser settings."""
  config.model.name = name
  if name == 'bisenet':
    config.train.learning_rate = 2.5e-2
    config.train.weight_decay = 1e-4
    config.train.head_lr_mult = 1.0
    config.model.pretrained_hint = PRETRAINED_WEIGHTS['resnet18']
  elif name == 'deeplabv2':
    config.train.learning_rate = 2.5e-4
    config.train.weight_decay = 5e-4
    config.train.head_lr_mult = 10.0
    config.model.bn_mode = 'batch'  # the references: BN affine frozen, batch statistics in training
    config.model.pretrained_hint = PRETRAINED_WEIGHTS['deeplab_imagenet']
  else:
    raise errors.ConfigError(f'Unknown model preset {name!r}; choose one of {MODEL_PRESETS}.')


def _real_data(config: ml_collections.ConfigDict, gta5_hw: tuple[int, int], cityscapes_hw: tuple[int, int]) -> None:
  """Stored sizes of the real datasets (SYNTHIA at its 760x1280), the real-data logging/checkpoint cadence and the
  `paper` scale flag."""
  config.scale = 'paper'
  data = config.data
  data.gta5_size, data.cityscapes_size = gta5_hw, cityscapes_hw
  data.synthia_size = REAL_STORED_SIZE['synthia']
  data.num_workers = 8
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 2000
  config.eval.every_steps = 5000


def apply_adaptsegnet_recipe(config: ml_collections.ConfigDict) -> None:
  """AdaptSegNet (train_gta2cityscapes_multi.py l.27-53): batch 1; GTA5 resized to 1280x720 (SYNTHIA, preset
  `synthia`: 1280x760, the paper's Sec. 5.2, same schedule) and Cityscapes to 1024x512, no crop, no augmentation;
  SGD 2.5e-4 (x10 classifiers), momentum 0.9, weight decay 5e-4, poly 0.9 over 250k steps stopped at 150k;
  evaluated at 1024x512 against the full-resolution labels, align_corners=True."""
  _real_data(config, (720, 1280), (512, 1024))
  t, data = config.train, config.data
  data.resize_mode = 'resize'
  data.source_train_size = REAL_STORED_SIZE[data.source]
  data.target_train_size = (512, 1024)
  t.batch_size, t.learning_rate, t.momentum, t.weight_decay, t.poly_power = 1, 2.5e-4, 0.9, 5e-4, 0.9
  t.schedule_steps, t.num_steps = 250_000, 150_000
  t.augment = 'none'
  config.model.align_corners = True
  config.eval.protocol, config.eval.input_size, config.eval.align_corners = 'adaptsegnet', (512, 1024), True


def apply_fda_recipe(config: ml_collections.ConfigDict) -> None:
  """FDA (options/train_options.py l.24-31, data/__init__.py l.10): batch 1; GTA5 resized to 1280x720 (SYNTHIA:
  1280x760) and randomly cropped to 1024x512, Cityscapes resized to 1024x512; SGD 2.5e-4, poly 0.9 over 150k steps
  stopped at 100k; evaluated as AdaptSegNet."""
  apply_adaptsegnet_recipe(config)
  config.data.resize_mode = 'crop'  # the Cityscapes images are stored at the crop size: their crop is the image
  config.data.source_train_size = (512, 1024)
  config.train.schedule_steps, config.train.num_steps = 150_000, 100_000


def apply_dacs_recipe(config: ml_collections.ConfigDict) -> None:
  """DACS (configs/configUDA.json l.6-38): batch 2, 512x512 random crops of GTA5 at 1280x720 and Cityscapes at
  1024x512, SGD 2.5e-4 (x10 classifiers), poly 0.9 over 250k iterations, MS-COCO init; evaluated at 512x1024,
  align_corners=True. SYNTHIA (preset `synthia`): the same recipe from SYNTHIA at 1280x760 (the DACS paper, Sec. 4.1;
  its released trainUDA.py wires only GTA5, data/synthia_dataset.py resizes to the size it is given)."""
  _real_data(config, (720, 1280), (512, 1024))
  t, data = config.train, config.data
  data.resize_mode = 'crop'
  data.source_train_size = data.target_train_size = (512, 512)
  t.batch_size, t.learning_rate, t.momentum, t.weight_decay, t.poly_power = 2, 2.5e-4, 0.9, 5e-4, 0.9
  t.schedule_steps = t.num_steps = 250_000
  config.model.align_corners = True
  config.model.pretrained_hint = PRETRAINED_WEIGHTS['deeplab_coco']
  config.eval.protocol, config.eval.input_size, config.eval.align_corners = 'dacs', (512, 1024), True


def apply_course_recipe(config: ml_collections.ConfigDict) -> None:
  """The real-time course setting (REFERENCES.md, "Course setting for BiSeNet"), one recipe for every config so a
  course table compares like with like: GTA5 stored at 720x1280 (SYNTHIA at 760x1280), Cityscapes at 512x1024,
  random 512x1024 crops, batch 2, SGD lr 2.5e-4 x batch, poly 0.9, 50 epochs of the training domain; discriminators
  (adv.py) at 1e-4 x batch; scored at the stored 512x1024 labels."""
  _real_data(config, (720, 1280), (512, 1024))
  t, data = config.train, config.data
  data.resize_mode = 'crop'
  data.source_train_size = data.target_train_size = (512, 1024)
  t.batch_size = 2
  t.learning_rate = 2.5e-4 * t.batch_size
  t.schedule_steps = t.num_steps = 50 * REAL_TRAIN_IMAGES[data.source] // t.batch_size
  config.eval.protocol = 'stored'


# The demo's two stages (protocol v2 of the results table in miniature): a source-only model trained for
# DEMO_SOURCE_STEPS steps in runs/source_only (trained by the first adaptation run that needs it), then each method
# adapts it for DEMO_ADAPT_STEPS steps.
DEMO_SOURCE_STEPS = 300
DEMO_ADAPT_STEPS = 150
DEMO_SOURCE_WORKDIR = 'runs/source_only'


def demo_source_workdir(model_config: ml_collections.ConfigDict, source: str = 'gta5') -> str:
  """runs/source_only for BiSeNet on GTA5 (the main command's first stage); one folder per other architecture and
  per other source (runs/source_only_synthia, ...), so that an adaptation never meets another model's weights or a
  model trained on another source."""
  arch = '' if model_config.name == 'bisenet' else (
      f"_{model_config.name}{'_multilevel' if model_config.get('multi_level') else ''}")
  return f"{DEMO_SOURCE_WORKDIR}{arch}{'' if source == 'gta5' else f'_{source}'}"


def apply_warm_start_demo(config: ml_collections.ConfigDict) -> None:
  """At the demo scale, an adaptation config starts from the source-only run (training it first if missing)."""
  if config.scale != 'demo':
    return
  config.model.init_from = demo_source_workdir(config.model, config.data.source)
  config.model.init_steps = DEMO_SOURCE_STEPS
  config.train.num_steps = DEMO_ADAPT_STEPS
  config.train.checkpoint_every_steps = config.eval.every_steps = DEMO_ADAPT_STEPS


def apply_presets(config: ml_collections.ConfigDict, arg: str | None,
                  own: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """Applies the shared presets of 'a,b,...' (either order, ':' or ',' separated): the model first, then the scale
  (`paper`: `recipe`, the config's reference recipe for DeepLab-v2, the course recipe for BiSeNet; `course`: the
  course recipe for BiSeNet), with the source preset (`synthia`: data.source='synthia') before the scale, so the
  recipes take its sizes. `own` are the config's own preset names, which this skips (the config applies them).
  The config sets `recipe` before calling. Returns the config."""
  presets = split_preset(arg)
  known = tuple(own) + MODEL_PRESETS + SCALE_PRESETS + SOURCE_PRESETS
  unknown = [p for p in presets if p not in known]
  if unknown:
    close = difflib.get_close_matches(unknown[0], known, n=1)
    raise errors.ConfigError(f'Unknown preset {unknown[0]!r} for config {config.name!r}'
                             f'{f" (did you mean {close[0]!r}?)" if close else ""}; its presets: {", ".join(known)} '
                             '(combine them with commas).')
  if 'course' in presets and 'deeplabv2' in presets:
    raise errors.ConfigError(f'Preset `course` is the BiSeNet course setting (config {config.name!r}); for '
                             'DeepLab-v2 use `deeplabv2,paper`, its reference recipe.')
  if 'synthia' in presets:
    if config.data.source == 'cityscapes':
      raise errors.ConfigError(f'Preset `synthia` sets the labelled source domain; config {config.name!r} trains on '
                               'Cityscapes itself (the oracle). Drop the preset.')
    config.data.source = 'synthia'
  if 'course' in presets:
    apply_model_preset(config, 'bisenet')
  for p in presets:
    if p in MODEL_PRESETS:
      apply_model_preset(config, p)
  if 'course' in presets or ('paper' in presets and config.model.name == 'bisenet'):
    apply_course_recipe(config)
  elif 'paper' in presets:
    RECIPES[config.recipe](config)
  return config


RECIPES = {'adaptsegnet': apply_adaptsegnet_recipe, 'fda': apply_fda_recipe, 'dacs': apply_dacs_recipe,
           'course': apply_course_recipe}
