"""ImageNet (or DeepLab init) weights for the ResNet backbones, from PyTorch state dicts, without PyTorch at run time.

A weight file is a flat state dict with torchvision's key names and PyTorch layouts (conv OIHW):
- `.npz` or `.safetensors`: read with numpy / safetensors (no PyTorch);
- `.pth` / `.pt`: read with torch (optional). Convert once on a machine with PyTorch:
  `python -m rtda_jax.models.pretrained convert IN.pth OUT.npz` (or OUT.safetensors).

Mapping (one to one, see resnet.py): `a.b.conv1.weight` [O, I, kh, kw] -> params a/b/conv1/kernel [kh, kw, I, O];
BN `weight`/`bias` -> params scale/bias; `running_mean`/`running_var` -> batch_stats mean/var.
Ignored keys: `num_batches_tracked`, the ImageNet classifier `fc.*`, and `layer5.*`, the classifier of the DeepLab-v2
init file (`DeepLab_resnet_pretrained_init-f81d91e8.pth`, keys `Scale.conv1.weight`, `Scale.layer1.0.conv1.weight`,
..., `Scale.layer5.conv2d_list.{0..3}.{weight,bias}`): it predicts 21 classes, not ours, and AdaptSegNet / FDA / DACS
also drop it for 19 classes, so our classifiers keep their N(0, 0.01) init. Prefixes `module.` and `Scale.` are
stripped. Every other key must match the backbone exactly, in name and shape; otherwise a ValueError lists them.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

STRIP_PREFIXES = ('module.', 'Scale.')
IGNORED_PREFIXES = ('fc.', 'layer5.')
IGNORED_SUFFIXES = ('num_batches_tracked',)
# (collection, Flax leaf) -> PyTorch leaf
_TO_TORCH_LEAF = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight', ('params', 'bias'): 'bias',
                  ('batch_stats', 'mean'): 'running_mean', ('batch_stats', 'var'): 'running_var'}
NO_TORCH_MESSAGE = ('Reading {path} needs PyTorch, which is not installed. Convert the file once on a machine with '
                    'PyTorch: `python -m rtda_jax.models.pretrained convert {path} weights.npz`, then use the .npz '
                    '(or .safetensors) file.')


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A flat {torch key: numpy array} from a .npz, .safetensors or (with PyTorch) .pth/.pt file."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'Weight file {path!r} does not exist (config.model.pretrained names a .npz, '
                            '.safetensors or .pth file; None keeps the random init).')
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as data:
      return {k: np.asarray(data[k]) for k in data.files}
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file
    return dict(load_file(path))
  if path.endswith(('.pth', '.pt', '.pth.tar', '.bin')):
    return _read_torch(path)
  raise ValueError(f'Unknown weight file type {path!r}: use .npz, .safetensors or .pth.')


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise ImportError(NO_TORCH_MESSAGE.format(path=path)) from e
  obj = torch.load(path, map_location='cpu', weights_only=True)
  for key in ('state_dict', 'model'):
    if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path!r} does not hold a state dict (got {type(obj).__name__}).')
  return {k: v.detach().cpu().numpy() for k, v in obj.items() if isinstance(v, torch.Tensor)}


def write_state_dict(state_dict: Mapping[str, np.ndarray], path: str) -> None:
  """Writes a flat {key: array} as .npz or .safetensors."""
  arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
  if path.endswith('.npz'):
    np.savez(path, **arrays)
  elif path.endswith('.safetensors'):
    from safetensors.numpy import save_file
    save_file(arrays, path)
  else:
    raise ValueError(f'Unknown output type {path!r}: use .npz or .safetensors.')


def _canonical(key: str) -> str | None:
  """Strips wrapper prefixes; None for a key that is deliberately ignored."""
  for prefix in STRIP_PREFIXES:
    if key.startswith(prefix):
      key = key[len(prefix):]
  if key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES):
    return None
  return key


def flax_to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{'params', 'batch_stats'} of a ResNet -> flat torchvision-named state dict (numpy, PyTorch layouts)."""
  out = {}
  for collection in ('params', 'batch_stats'):
    for path, leaf in _flatten(variables.get(collection, {})):
      torch_leaf = _TO_TORCH_LEAF[(collection, path[-1])]
      value = np.asarray(leaf, np.float32)
      if path[-1] == 'kernel':
        value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
      out['.'.join(path[:-1] + (torch_leaf,))] = value
  return out


def torch_shapes(variables: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """{torch key: PyTorch-layout shape} of a ResNet's {'params', 'batch_stats'} (arrays or ShapeDtypeStructs)."""
  out = {}
  for collection in ('params', 'batch_stats'):
    for path, leaf in _flatten(variables.get(collection, {})):
      shape = tuple(leaf.shape)
      if path[-1] == 'kernel':
        shape = (shape[3], shape[2], shape[0], shape[1])
      out['.'.join(path[:-1] + (_TO_TORCH_LEAF[(collection, path[-1])],))] = shape
  return out


def torch_to_flax(state_dict: Mapping[str, np.ndarray]) -> dict[str, dict]:
  """Flat torchvision-named state dict -> {'params': ..., 'batch_stats': ...} nested for resnet.ResNet."""
  out: dict[str, dict] = {'params': {}, 'batch_stats': {}}
  for key, value in state_dict.items():
    key = _canonical(key)
    if key is None:
      continue
    *modules, leaf = key.split('.')
    value = np.asarray(value, np.float32)
    if leaf == 'weight' and value.ndim == 4:
      collection, name, value = 'params', 'kernel', value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif leaf == 'weight':
      collection, name = 'params', 'scale'
    elif leaf == 'bias':
      collection, name = 'params', 'bias'
    elif leaf in ('running_mean', 'running_var'):
      collection, name = 'batch_stats', 'mean' if leaf == 'running_mean' else 'var'
    else:
      raise ValueError(f'Unexpected key {key!r} in the state dict (shape {value.shape}).')
    node = out[collection]
    for m in modules:
      node = node.setdefault(m, {})
    node[name] = value
  return out


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
  items = []
  for k, v in tree.items():
    if isinstance(v, Mapping):
      items.extend(_flatten(v, prefix + (str(k),)))
    else:
      items.append((prefix + (str(k),), v))
  return items


def check_state_dict(state_dict: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], source: str
                     ) -> None:
  """Raises a ValueError listing missing, unexpected and mis-shaped keys (after prefixes and ignored keys)."""
  got = {}
  for key, value in state_dict.items():
    canonical = _canonical(key)
    if canonical is not None:
      got[canonical] = np.shape(value)
  missing = sorted(set(expected) - set(got))
  unexpected = sorted(set(got) - set(expected))
  mismatched = sorted(f'{k}: file {tuple(got[k])} vs model {tuple(expected[k])}'
                      for k in set(got) & set(expected) if tuple(got[k]) != tuple(expected[k]))
  if missing or unexpected or mismatched:
    lines = [f'The weights in {source} do not match the backbone (nothing was loaded).']
    for title, keys in (('missing', missing), ('unexpected', unexpected), ('shape mismatch', mismatched)):
      if keys:
        lines.append(f'{len(keys)} {title} key(s):\n  ' + '\n  '.join(keys))
    raise ValueError('\n'.join(lines))


def load_backbone(state_dict: Mapping[str, np.ndarray], backbone: Mapping[str, Any], source: str = 'the file'
                  ) -> dict[str, Any]:
  """Returns `backbone` ({'params', 'batch_stats'} of a ResNet) with every leaf replaced from `state_dict`."""
  check_state_dict(state_dict, torch_shapes(backbone), source)
  loaded = torch_to_flax(state_dict)
  out = {}
  for collection in ('params', 'batch_stats'):
    if collection in backbone:
      source_tree = loaded[collection]
      out[collection] = _map_with_path(
          lambda path, old, tree=source_tree: jnp.asarray(_get(tree, path), old.dtype), backbone[collection])
  return out


def _map_with_path(fn: Any, tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, Any]:
  return {k: _map_with_path(fn, v, prefix + (k,)) if isinstance(v, Mapping) else fn(prefix + (k,), v)
          for k, v in tree.items()}


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for p in path:
    tree = tree[p]
  return tree


def _set(tree: Mapping[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
  """A copy of `tree` with the subtree at `path` replaced (the other subtrees are shared)."""
  tree = dict(tree)
  tree[path[0]] = value if len(path) == 1 else _set(tree[path[0]], path[1:], value)
  return tree


def load_pretrained(model_config: Any, variables: Mapping[str, Any]) -> Any:
  """`variables` ({'params', 'batch_stats'}) with the backbone loaded from `model_config.pretrained`.

  None keeps the random init. The ResNet's parameters and BN statistics are replaced; heads are untouched.
  """
  path = model_config.get('pretrained') if hasattr(model_config, 'get') else model_config.pretrained
  if not path:
    return variables
  from rtda_jax.models import get_model_spec
  backbone_path = get_model_spec(model_config.name).backbone_path
  backbone = {c: _get(variables[c], backbone_path) for c in ('params', 'batch_stats') if c in variables}
  loaded = load_backbone(read_state_dict(path), backbone, source=path)
  out = dict(variables)
  for collection, subtree in loaded.items():
    out[collection] = _set(variables[collection], backbone_path, subtree)
  return out


def convert(src: str, dst: str) -> int:
  """Converts a PyTorch .pth state dict to .npz / .safetensors (same keys and layouts). Returns the tensor count."""
  state_dict = read_state_dict(src)
  write_state_dict(state_dict, dst)
  return len(state_dict)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m rtda_jax.models.pretrained', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  conv = sub.add_parser('convert', help='IN.pth -> OUT.npz / OUT.safetensors (needs PyTorch)')
  conv.add_argument('src')
  conv.add_argument('dst')
  args = parser.parse_args(argv)
  try:
    n = convert(args.src, args.dst)
  except (ImportError, FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {n} tensors to {args.dst}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
