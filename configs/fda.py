"""FDA: Fourier domain adaptation GTA5 -> Cityscapes, multi-band transfer (MBT) and self-training.

Presets (combinable with ','):
- `b001`, `b005`, `b009` (or `beta0.01`, ...): the FDA beta; each gets its own default workdir runs/fda_b001, ...
- `mbt`: `--mode=pseudolabel` settings: ensemble of `mbt.workdirs` (default the three beta runs), evaluated on the
  target val split, and pseudo-labels of the target train split written to <data.root>/pseudo/<mbt.name>/.
- `selftrain`: FDA plus CE on the pseudo-labels of `selftrain.pseudo_dir` (default <data.root>/pseudo/<mbt.name>).
- `deeplabv2` (DeepLab-v2 ResNet-101, FDA's network), `paper` (DeepLab-v2: FDA's recipe, see
  common.apply_fda_recipe; BiSeNet: the course recipe), `course` (BiSeNet, the course recipe).
Each beta is its own run with its own seed (`seed_offset` 0 / 1 / 2 for b001 / b005 / b009), so the MBT members differ
in data order (and, when not warm-started, in initialisation) as FDA's three independent trainings do. At the demo
scale all three start from the same source-only model.
"""

import re

import ml_collections

from configs import common
from rtda_jax import errors

FDA_PRESETS = ('mbt', 'selftrain')
BETA_SEED_OFFSETS = {0.01: 0, 0.05: 1, 0.09: 2}  # the MBT members are independent runs
_BETA = (re.compile(r'^b(\d{3})$'), re.compile(r'^beta(\d*\.?\d+)$'))


def parse_beta(preset: str) -> float | None:
  """'b001' -> 0.01, 'b009' -> 0.09, 'beta0.05' -> 0.05; None for other presets."""
  m = _BETA[0].match(preset)
  if m:
    return int(m.group(1)) / 100
  m = _BETA[1].match(preset)
  return float(m.group(1)) if m else None


def beta_tag(beta: float) -> str:
  """0.01 -> 'b001' (the name of a beta in workdirs)."""
  return f'b{int(round(beta * 100)):03d}'


def get_config(arg=None):
  config = common.get_base_config()
  config.name = 'fda'  # for the messages of apply_presets; the run's name is set below
  config.method = 'fda'
  config.recipe = 'fda'
  config.data.source = 'gta5'
  config.data.target = 'cityscapes'

  config.fda = fda = ml_collections.ConfigDict()
  fda.beta = 0.01  # window half-size b = floor(min(H, W) * beta); FDA: 0.01, 0.05, 0.09
  fda.window = 'corners'  # 'corners' (FDA's train.py: frequencies -b..b-1) | 'centred' (its NumPy version: -b..b)
  fda.entropy_weight = 0.005  # FDA's entW
  fda.entropy_eta = 2.0  # FDA's ita: mean(((H / ln C)^2 + 1e-8)^eta)
  fda.entropy_start_step = 0  # FDA's switch2entropy (its README's command uses 0)

  # Self-training on pseudo-labels (FDA's SStrain.py): CE on the pseudo-labelled target, weight 1.
  config.selftrain = st = ml_collections.ConfigDict()
  st.pseudo_dir = ml_collections.FieldReference(None, field_type=str)  # raw Cityscapes-layout pseudo-label folder
  st.pseudo_weight = 1.0

  # Multi-band transfer (--mode=pseudolabel): ensemble, evaluation, pseudo-labels (FDA's getSudoLabel_multi.py).
  config.mbt = mbt = ml_collections.ConfigDict()
  mbt.workdirs = ''  # comma-separated workdirs of the ensemble members (their last checkpoints)
  mbt.name = 'fda_mbt'  # pseudo-labels go to <data.root>/pseudo/<name>/
  mbt.split = 'train'  # the target split that gets pseudo-labels
  mbt.percentile = 0.66  # per class: the confidence at rank round(0.66 n) of the n pixels predicted as the class
  mbt.max_threshold = 0.9  # thresholds are capped here
  mbt.num_bins = 10000  # confidence histogram bins over [0, 1] (thresholds are exact to one bin)
  # Pseudo-label selection rule: 'fda' (per-class percentile of the confidences, FDA's getSudoLabel_multi.py),
  # 'cbst' (class-balanced: CBST's class-normalised confidences, keeping `cbst_portion` of each class's pixels),
  # 'agreement' (the FDA rule, and every ensemble member must predict the same class). See rtda_jax/selftrain.py.
  mbt.rule = 'fda'
  mbt.cbst_portion = 0.2  # CBST: portion p of each class's predicted pixels kept (grow it over rounds: 0.2, 0.4, ...)
  # Image selection (rtda_jax/select.py): which images of the target `split` get pseudo-labels; the others are absent
  # from the pseudo-labelled folder, so self-training never sees them. 'all' (every image) | 'fd' (the k images of
  # smallest squared Mahalanobis distance to the Gaussian of the reference set's features: the network of
  # --mode=fid, fid.inception_weights or fid.feature_workdir) | 'histogram' (the k of luminance histogram closest,
  # chi-square, to the reference's mean) | 'random' (k drawn with select_seed). Recorded in selection.json.
  mbt.select = 'all'
  mbt.select_k = 0  # images kept (1..size of the split) by 'fd' / 'histogram' / 'random'
  mbt.select_reference = ''  # 'fd' / 'histogram': a folder of images or '<source|target|domain>:<split>' (as fid.a)
  mbt.select_seed = 0  # 'random'
  mbt.select_shrinkage = 0.1  # 'fd': the reference covariance shrunk towards its mean eigenvalue by this much

  presets = common.split_preset(arg)
  betas = [b for b in map(parse_beta, presets) if b is not None]
  ours = [p for p in presets if p in FDA_PRESETS or parse_beta(p) is not None]
  common.apply_presets(config, ','.join(p for p in presets if p not in ours),
                       own=FDA_PRESETS + ('b001', 'b005', 'b009'))
  if len(betas) > 1:
    raise errors.ConfigError(f'Config fda.py got several betas {betas}; choose one preset of b001, b005, b009.')
  if betas:
    fda.beta = betas[0]
    config.seed_offset = BETA_SEED_OFFSETS.get(round(fda.beta, 4), 0)

  family = 'fda' + ('_deeplabv2' if config.model.name == 'deeplabv2' else '')
  mbt.name = f'{family}_mbt'
  mbt.workdirs = ','.join(f'runs/{family}_{beta_tag(b)}' for b in (0.01, 0.05, 0.09))
  if 'mbt' in presets:
    config.name = mbt.name
  else:
    config.name = family + (f'_{beta_tag(fda.beta)}' if betas else '')
  if 'selftrain' in presets:
    config.name += '_st'
    st.pseudo_dir = config.data.get_ref('root') + f'/pseudo/{mbt.name}'  # follows --config.data.root

  common.apply_warm_start_demo(config)
  return config
