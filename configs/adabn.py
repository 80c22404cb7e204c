"""AdaBN (Li et al., 2016): the source model with every BatchNorm's statistics re-estimated on target training
images (no gradient, no labels), then evaluated on the target. The control row of the results table.

`python main.py --config=configs/adabn.py --config.model.init_from=runs/source_only` (the demo default; the
source-only run is trained first when it does not exist). One "step" forwards one target batch; the default runs one
epoch of the target training split. Presets: `bisenet` (default), `deeplabv2`.
"""

from configs import common


def get_config(arg=None):
  config = common.get_base_config()
  config.name = 'adabn'
  config.method = 'adabn'
  config.data.source = 'gta5'
  config.data.target = 'cityscapes'
  common.apply_presets(config, arg)
  common.apply_warm_start_demo(config)
  # One pass over the target training split: batches of train.batch_size images, no optimiser. Set
  # --config.train.num_steps with another batch size or dataset (real Cityscapes: 2975 // batch).
  images = (common.REAL_TRAIN_IMAGES['cityscapes'] if config.scale == 'paper'
            else config.data.synthetic.num_cityscapes_train)
  config.train.num_steps = images // config.train.batch_size
  config.train.log_every_steps = 25
  config.train.checkpoint_every_steps = config.eval.every_steps = config.train.num_steps
  return config
