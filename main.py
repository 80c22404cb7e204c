"""rtda-jax command line: `python main.py --config=configs/adv.py[:preset] [--workdir=DIR] [--mode=...]`."""

from absl import app, flags, logging
from ml_collections import config_flags

from rtda_jax import app as rtda_app

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file, e.g. configs/adv.py:bisenet.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory; defaults to runs/<config name>. Resumes if it holds '
                               'a checkpoint.')
_MODE = flags.DEFINE_enum('mode', 'train', rtda_app.MODES, 'What to do.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # orbax and TFDS log every file at INFO; --verbosity=0 brings it back
    logging.set_verbosity(logging.WARNING)
  rtda_app.run(_CONFIG.value, workdir=_WORKDIR.value, mode=_MODE.value)


if __name__ == '__main__':
  app.run(main)
