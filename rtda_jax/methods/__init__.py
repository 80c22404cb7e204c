"""Training methods, found by name (`config.method`): `get_method(config)`.

Each method module registers its class with `base.register`; importing this package's `get_method` imports them all.
"""

from __future__ import annotations

import importlib

import ml_collections

from rtda_jax.methods import base

METHOD_MODULES = ('supervised', 'adversarial', 'fda', 'dacs', 'adabn', 'translate')


def get_method(config: ml_collections.ConfigDict) -> base.Method:
  """The method named by `config.method`, built from `config`."""
  for name in METHOD_MODULES:
    importlib.import_module(f'rtda_jax.methods.{name}')
  if config.method not in base._REGISTRY:  # pylint: disable=protected-access
    raise ValueError(f'config.method={config.method!r} is not a known method; known: {sorted(base._REGISTRY)}.')
  return base._REGISTRY[config.method](config)  # pylint: disable=protected-access
