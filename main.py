"""rtda-jax command line: `python main.py --config=configs/adv.py[:preset] [--workdir=DIR] [--mode=...]`."""

from absl import app, flags
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
  rtda_app.run(_CONFIG.value, workdir=_WORKDIR.value, mode=_MODE.value)


if __name__ == '__main__':
  app.run(main)
