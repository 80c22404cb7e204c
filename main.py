"""rtda-jax command line: `python main.py --config=configs/adv.py[:preset] [--workdir=DIR] [--mode=...]`.

Exit codes:
  0    done.
  1    an unexpected failure (a bug, or the machine: out of memory, a lost device): the traceback is printed.
  2    a user error (an unknown flag or preset, a bad config value, a bad dataset, an unusable workdir): one line
       `error: <what and how to fix it>` on stderr; `--verbosity=1` prints the traceback too.
  128+N  stopped by signal N after saving the checkpoint (130 = SIGINT / Ctrl-C, 143 = SIGTERM), so that
       `python main.py ... && next_stage` does not go on after a kill; the same command resumes.

A tuple field given twice takes the last value: `--config.data.gta5_size='(64,64)' --config.data.gta5_size='(32,32)'`
is (32, 32). (ml_collections appends repeated values of a tuple flag; a scalar repeated, `--config.eval.scales=0.5
--config.eval.scales=1.0`, still builds (0.5, 1.0), its documented syntax.)
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from rtda_jax import app as rtda_app
from rtda_jax import errors

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file, e.g. configs/adv.py:bisenet.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory; defaults to runs/<config name>. Resumes if it holds '
                               'a checkpoint.')
_MODE = flags.DEFINE_enum('mode', 'train', rtda_app.MODES, 'What to do.')
flags.mark_flags_as_required(['config'])

_OVERRIDE = '--config.'


def last_tuple_override_wins(argv: Sequence[str]) -> list[str]:
  """argv without the earlier occurrences of a `--config.<field>` override that a later whole-tuple value of the
  same field (`=(a, b)` or `=[a, b]`) replaces; both `--config.x=V` and `--config.x V` forms. Everything else, and
  the order, is kept (absl takes the last value of a scalar flag anyway)."""
  argv = list(argv)
  spans = []  # (field, first index, last index + 1, value) of every override
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(_OVERRIDE) and len(arg) > len(_OVERRIDE):
      if '=' in arg:
        field, value = arg.split('=', 1)
        spans.append((field, i, i + 1, value))
      elif i + 1 < len(argv) and not argv[i + 1].startswith('-'):  # else a boolean flag without a value
        spans.append((arg, i, i + 2, argv[i + 1]))
        i += 1
    elif arg == '--':
      break
    i += 1
  drop = set()
  for k, (field, _, _, value) in enumerate(spans):
    if value.strip()[:1] in ('(', '['):
      for earlier in spans[:k]:
        if earlier[0] == field:
          drop.update(range(earlier[1], earlier[2]))
  return [a for j, a in enumerate(argv) if j not in drop]


def _verbose(argv: Sequence[str]) -> bool:
  """--verbosity (or -v) >= 1: tracebacks with user errors. Read from argv too, for errors while flags parse."""
  if flags.FLAGS.is_parsed():
    return flags.FLAGS['verbosity'].present and flags.FLAGS.verbosity >= 1
  for k, arg in enumerate(argv):
    for name in ('--verbosity', '-v', '--v'):
      if arg == name and k + 1 < len(argv):
        arg = f'{name}={argv[k + 1]}'
      if arg.startswith(name + '='):
        try:
          return int(arg.split('=', 1)[1]) >= 1
        except ValueError:
          return False
  return False


def _user_error(exc: BaseException) -> errors.UserError | None:
  """The innermost UserError in an exception's chain (config_flags re-raises a get_config error as a copy whose
  message holds the traceback; the original is its context)."""
  found, seen = None, set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, errors.UserError):
      found = exc
    exc = exc.__cause__ or exc.__context__
  return found


def _fail(message: str, exc: BaseException | None, verbose: bool, code: int = errors.USER_ERROR_EXIT) -> None:
  if verbose and exc is not None:
    traceback.print_exception(exc, file=sys.stderr)
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with the last whole-tuple override winning; a bad flag or config is a user error (exit 2,
  the message alone)."""
  argv = last_tuple_override_wins(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    user = _user_error(e)
    message = str(user) if user is not None else f'{e}. Pass --helpshort or --helpfull to see help on flags.'
    _fail(message, e, _verbose(argv))
  except (AttributeError, KeyError) as e:  # config_flags: an override names no field of the config
    _fail(_unknown_field_message(argv, e), e, _verbose(argv))
  raise AssertionError('unreachable')


def _unknown_field_message(argv: Sequence[str], exc: BaseException) -> str:
  """'--config.train.num_step names no field of the config: 'num_step' (did you mean "num_steps" ...?)', from the
  KeyError that ml_collections raises while it defines the override flags."""
  detail = ''
  while exc is not None:  # the KeyErrors of the chain: the raw key, then one with ml_collections' "Did you mean"
    if isinstance(exc, KeyError) and exc.args and '\n' not in detail:
      detail = str(exc.args[0])
    exc = exc.__context__
  key, _, hint = detail.partition('\n')
  key = key.strip('\'"')
  overrides = [a.split('=', 1)[0] for a in argv if a.startswith(_OVERRIDE)]
  named = [a for a in overrides if key in a[len(_OVERRIDE):].split('.')] or overrides or ['--config.<field>']
  return (f'{named[0]} names no field of the config: no {key!r}{f" ({hint.strip()})" if hint.strip() else ""}. '
          'The fields are those of configs/common.py and of the config file.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments {list(argv[1:])}: every option is a --flag (e.g. --config.train.num_steps=100).',
          None, False)
  if not flags.FLAGS['verbosity'].present:  # orbax and TFDS log every file at INFO; --verbosity=0 brings it back
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  try:
    config.get('name')  # a config file that failed to load (missing, IOError inside) raises here
  except OSError as e:
    _fail(f'--config={flags.FLAGS["config"].serialize().split("=", 1)[-1]}: {e.__cause__ or e}', e, _verbose(argv))
  try:
    rtda_app.run(config, workdir=_WORKDIR.value, mode=_MODE.value)
  except errors.UserError as e:
    _fail(str(e), e, _verbose(argv))
  except errors.Interrupted as e:
    print(str(e), file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
