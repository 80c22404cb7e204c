"""The embedded benchmark's camera, static street and renderer (styles: synthetic_styles.py; writers: synthetic.py;
furniture, vehicles and people: synthetic_objects.py).

A pinhole camera looks down a straight street: road, sidewalks, verges, buildings with windows, trees, walls and
fences. Every object is made of parts (polygons, ellipses, lines), each with a material, which the style turns into
a colour and a texture, and a Cityscapes label id. Parts are drawn far to near into a part-id map with PIL, so nearer
objects occlude farther ones; the label map and the image are lookups into per-part tables, followed by the style's
textures, lighting, fog, colour grading, blur, vignetting and noise. World units are metres: X to the right, Y up,
Z forward from the camera."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from rtda_jax import labels
from rtda_jax.data.synthetic_styles import Style

TEXTURES = ('flat', 'noise', 'blotch', 'leaves', 'hstripes', 'vstripes', 'bricks', 'tiles', 'mesh')
SKY_DEPTH = 1000.0
CONST, GROUND_PLANE, X_PLANE = 0, 1, 2  # how a part's per-pixel depth is found: constant, ground plane, plane X = c
Op = tuple  # ('p', points, part) polygon | ('e', box, part) ellipse | ('l', points, part, width) | ('r', box, part, w)

_ID = {l.name: l.id for l in labels.LABELS}
EGO, STATIC, GROUND, ROAD, SIDEWALK, PARKING, RAIL = (_ID[n] for n in (
    'ego vehicle', 'static', 'ground', 'road', 'sidewalk', 'parking', 'rail track'))
BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = (_ID[n] for n in (
    'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign', 'vegetation', 'terrain', 'sky'))
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = (_ID[n] for n in (
    'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle'))


def line_width(k: float, metres: float) -> int:
  """Line width in pixels (k pixels per metre), at least 1."""
  return max(1, int(round(k * metres)))


def box(center: tuple[float, float], half: tuple[float, float]) -> tuple[float, float, float, float]:
  """Bounding box (x0, y0, x1, y1) of an ellipse from its centre and half-axes, in pixels."""
  (u, v), (a, b) = center, half
  return (u - a, v - b, u + a, v + b)


def between(rng: np.random.Generator, a: float, b: float) -> float:
  """Uniform between a and b, in either order."""
  return a + (b - a) * rng.random()


def loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
  """Depths drawn log-uniformly: as many objects per doubling of distance."""
  return float(math.exp(rng.uniform(math.log(lo), math.log(max(hi, lo * 1.01)))))


class Scene:
  """One camera over one street and the parts added so far; `rasterise` draws them far to near."""

  def __init__(self, style: Style, rng: np.random.Generator, size: tuple[int, int]):
    self.style, self.rng = style, rng
    self.H, self.W = size
    self.f = self.W * rng.uniform(*style.focal)  # focal length, pixels
    self.yh = self.H * rng.uniform(*style.horizon)  # horizon row
    self.xv = self.W * rng.uniform(0.4, 0.6)  # vanishing-point column
    self.hc = rng.uniform(*style.camera_height)  # camera height
    self.z_min = self.f * self.hc / (self.H - self.yh)  # depth of the ground at the bottom row
    # label, rgb, texture index, texture strength, depth (or plane X), depth kind, emissive
    self.parts: list[tuple] = [(0, (0.0, 0.0, 0.0), 0, 0.0, SKY_DEPTH, CONST, 0.0)]
    self.objects: list[tuple] = []  # (layer, -depth, sequence number, ops)
    self.shadows: list[list] = []  # screen polygons darkened by the lighting

  def proj(self, x: float, y: float, z: float) -> tuple[float, float]:
    """World point -> (column, row) in pixels."""
    return (self.xv + self.f * x / z, self.yh + self.f * (self.hc - y) / z)

  def quad_x(self, x: float, y0: float, y1: float, z0: float, z1: float) -> list:  # in the plane X = x (facades)
    p = self.proj
    return [p(x, y0, z0), p(x, y1, z0), p(x, y1, z1), p(x, y0, z1)]

  def quad_y(self, x0: float, x1: float, z0: float, z1: float, y: float = 0.0) -> list:  # plane Y = y (ground)
    p = self.proj
    return [p(x0, y, z0), p(x1, y, z0), p(x1, y, z1), p(x0, y, z1)]

  def quad_z(self, x0: float, x1: float, y0: float, y1: float, z: float) -> list:  # facing the camera
    p = self.proj
    return [p(x0, y0, z), p(x1, y0, z), p(x1, y1, z), p(x0, y1, z)]

  def disc_x(self, x: float, yc: float, zc: float, r: float, n: int = 10) -> list:  # a wheel seen from the side
    return [self.proj(x, yc + r * math.sin(a), zc + r * math.cos(a)) for a in np.linspace(0, 2 * math.pi, n, False)]

  def billboard(self, x: float, z: float, scale: float = 1.0, facing: int = 1) -> Callable:
    """Local (dx, dy) metres of an upright flat figure standing at (x, 0, z) -> screen point."""
    u, v = self.proj(x, 0.0, z)
    k = self.f / z * scale
    return lambda dx, dy: (u + k * facing * dx, v - k * dy)

  def color(self, material: str) -> np.ndarray:
    """A per-instance colour: one of the style's base colours for the material, jittered in brightness and hue."""
    choices = self.style.palette[material]
    base = np.asarray(choices[self.rng.integers(len(choices))], np.float64)
    gain = max(0.3, 1.0 + self.style.brightness_jitter * self.rng.standard_normal())
    return base * gain + self.style.color_jitter * self.rng.standard_normal(3)

  def part(self, material: str, label: int, depth: float, rgb=None, shade: float = 1.0, emissive: bool = False,
           depth_kind: int = CONST) -> int:
    """Registers a part; returns its id (the value drawn into the part-id map)."""
    rgb = self.color(material) if rgb is None else np.asarray(rgb, np.float64)
    kind, strength = self.style.textures.get(material, ('flat', 0.0))
    self.parts.append((label, tuple(np.clip(rgb * shade, 0, 255)), TEXTURES.index(kind), strength, depth,
                       depth_kind, float(emissive)))
    return len(self.parts) - 1

  def add(self, layer: int, depth: float, ops: list[Op]) -> None:
    """Layers are drawn in order (0 ground, 1 facades, 2 walls and fences, 3 street objects, 4 ego vehicle)."""
    self.objects.append((layer, -depth, len(self.objects), ops))

  def rasterise(self) -> np.ndarray:
    """[H, W] int32 part ids."""
    img = Image.new('I', (self.W, self.H), 0)
    draw = ImageDraw.Draw(img)
    for _, _, _, ops in sorted(self.objects, key=lambda o: o[:3]):
      for op in ops:
        if op[0] == 'p':
          draw.polygon(op[1], fill=op[2])
        elif op[0] == 'e':
          draw.ellipse(op[1], fill=op[2])
        elif op[0] == 'l':
          draw.line(op[1], fill=op[2], width=op[3])
        else:
          draw.ellipse(op[1], outline=op[2], width=op[3])
    return np.asarray(img)


# ---- layout ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Street:
  edge: dict  # side (-1 left, +1 right) -> X of the road edge
  walk: dict  # side -> X of the sidewalk's outer edge
  facade: dict  # side -> X of the building line
  lanes: list  # X of lane centres
  z_far: float  # where the street ends
  tram: float | None  # X of the tram track, if any
  crosswalk: float | None  # Z of a zebra crossing, if any
  parked: dict  # side -> whether cars park there


def layout(s: Scene) -> Street:
  """Road width and position, sidewalks, lanes, building lines, tram track, crossing, parking."""
  st, rng = s.style, s.rng
  width = rng.uniform(*st.road_width)
  left = -width * rng.uniform(0.25, 0.75)
  edge = {-1: left, 1: left + width}
  walk = {d: edge[d] + d * rng.uniform(*st.sidewalk_width) for d in (-1, 1)}
  n = max(1, round(width / 3.4))
  lanes = [left + width * (i + 0.5) / n for i in range(n)]
  tram = lanes[rng.integers(n)] if (width > 6.5 and rng.random() < st.counts['train']) else None
  crosswalk = rng.uniform(1.3 * s.z_min, 35) if rng.random() < st.crosswalk else None
  return Street(edge, walk, {d: walk[d] + d * rng.uniform(0, 4) for d in (-1, 1)}, lanes, rng.uniform(80, 220),
                tram, crosswalk, {d: rng.random() < st.parking and abs(edge[d]) > 3.2 for d in (-1, 1)})


def sky_and_ground(s: Scene, st: Street) -> None:
  """Sky and clouds; verges, sidewalks, kerbs, road, parking bays, rails, lane markings, zebra; cast shadows."""
  rng, W, H = s.rng, s.W, s.H
  ops = [('p', [(0, 0), (W, 0), (W, H), (0, H)], s.part('sky', SKY, SKY_DEPTH))]
  for _ in range(rng.poisson(s.style.counts['cloud'])):
    rx = W * rng.uniform(0.05, 0.2)
    ops.append(('e', box((rng.uniform(0, W), rng.uniform(-0.1, 0.8) * s.yh), (rx, rx * rng.uniform(0.15, 0.4))),
                s.part('cloud', SKY, SKY_DEPTH)))
  ground = lambda material, label, rgb=None: s.part(material, label, 0.0, rgb, depth_kind=GROUND_PLANE)
  open_ground = ('terrain', TERRAIN) if s.style.terrain else ('ground', GROUND)  # SYNTHIA has no terrain
  ops.append(('p', [(0, s.yh), (W, s.yh), (W, H), (0, H)], ground(*open_ground)))
  z0, zf = 0.9 * s.z_min, st.z_far
  walk_rgb = s.color('sidewalk')
  for d in (-1, 1):
    verge = [open_ground, ('ground', GROUND), ('sidewalk', SIDEWALK)][rng.choice(3, p=[0.55, 0.15, 0.3])]
    ops.append(('p', s.quad_y(st.walk[d], st.walk[d] + d * 300, z0, zf), ground(*verge)))
    ops.append(('p', s.quad_y(st.edge[d], st.walk[d], z0, zf), ground('sidewalk', SIDEWALK, walk_rgb)))
  ops.append(('p', s.quad_y(st.edge[-1], st.edge[1], z0, zf), ground('road', ROAD)))
  for d in (-1, 1):
    ops.append(('p', s.quad_x(st.edge[d], 0, 0.15, z0, zf), s.part('curb', SIDEWALK, st.edge[d], depth_kind=X_PLANE)))
    if st.parked[d] and rng.random() < 0.3:  # parking bays under the parked cars
      ops.append(('p', s.quad_y(st.edge[d] - d * 2.0, st.edge[d], z0, rng.uniform(20, 60)), ground('parking', PARKING)))
  if st.tram is not None:
    rail = ground('rail', RAIL)
    ops += [('p', s.quad_y(x - 0.08, x + 0.08, z0, zf), rail) for x in (st.tram - 0.75, st.tram + 0.75)]
  mark = ground('marking', ROAD)
  visible = lambda z, dz: s.f * s.hc * (1 / z - 1 / (z + dz)) > 0.6  # the strip is taller than 0.6 px
  for b in [(a + c) / 2 for a, c in zip(st.lanes, st.lanes[1:])]:
    z = z0 + rng.uniform(0, 9)
    while z < zf and visible(z, 3):
      ops.append(('p', s.quad_y(b - 0.08, b + 0.08, z, z + 3), mark))
      z += 9
  for d in (-1, 1):
    if rng.random() < 0.5:
      ops.append(('p', s.quad_y(st.edge[d] - d * 0.35, st.edge[d] - d * 0.2, z0, zf), mark))
  if st.crosswalk is not None:
    for x in np.arange(st.edge[-1] + 0.3, st.edge[1] - 0.5, 1.0):
      ops.append(('p', s.quad_y(x, x + 0.5, st.crosswalk, st.crosswalk + 3), mark))
  if rng.random() < s.style.shadow_prob:  # shadows cast by the buildings of one side across the street
    d = rng.choice([-1, 1])
    z = z0
    while z < 90:
      z1 = z + rng.uniform(5, 30)
      if rng.random() < 0.6:
        s.shadows.append(s.quad_y(st.facade[d], st.edge[d] - d * rng.uniform(0, st.edge[1] - st.edge[-1]), z, z1))
      z = z1
  s.add(0, 0.0, ops)


# ---- roadside: buildings, vegetation, walls, fences ------------------------------------------------------------

def roadside(s: Scene, st: Street, d: int) -> None:
  """One side of the street (d = -1 left, +1 right), stretch by stretch: buildings, trees, walls, fences, gaps."""
  rng, probs = s.rng, s.style.side_probs
  kinds, p = list(probs), np.array(list(probs.values()), np.float64)
  z = 0.9 * s.z_min
  while z < st.z_far:
    kind = kinds[rng.choice(len(kinds), p=p / p.sum())]
    z1 = min(z + rng.uniform(*((6, 14) if kind == 'gap' else (10, 35))), st.z_far)
    x = st.facade[d] + d * rng.uniform(0, 2.5)
    behind = kind if kind in ('building', 'vegetation') else ['building', 'vegetation', 'gap'][rng.integers(3)]
    if behind == 'building':
      _building(s, x, z, z1, d)
    elif behind == 'vegetation':
      _trees(s, x, z, z1, d)
    if kind in ('wall', 'fence'):
      _wall(s, st.walk[d] + d * rng.uniform(0.1, 1.0), z, z1, d, fence=kind == 'fence')
    z = z1


def _building(s: Scene, x: float, z0: float, z1: float, d: int) -> None:
  rng = s.rng
  h = rng.uniform(*s.style.building_height)
  rgb = s.color('building')
  face = s.part('building', BUILDING, x, rgb, depth_kind=X_PLANE)
  ops = [('p', s.quad_z(x, x + d * 20, 0, h, z0), s.part('building', BUILDING, z0, rgb, shade=0.72)),
         ('p', s.quad_x(x, 0, h, z0, z1), face)]
  if rng.random() < 0.5:
    ops.append(('p', s.quad_x(x, h - 0.7, h, z0, z1), s.part('building', BUILDING, x, rgb, 1.2, depth_kind=X_PLANE)))
  win = s.part('window', BUILDING, x, depth_kind=X_PLANE)
  lit = s.part('window_lit', BUILDING, x, emissive=True, depth_kind=X_PLANE)
  fh, cw = rng.uniform(2.8, 3.6), rng.uniform(2.2, 4.0)  # floor height, column width
  ww, wh = cw * rng.uniform(0.35, 0.7), fh * rng.uniform(0.4, 0.65)
  for zc in np.arange(z0 + 0.3 * cw, z1 - ww, cw):
    if s.f * abs(x) * (1 / zc - 1 / (zc + ww)) < 0.8 or s.f * wh / zc < 1.0:
      break  # farther windows are even smaller
    for y in np.arange(1.1 * fh, h - 0.7 * fh, fh):
      ops.append(('p', s.quad_x(x, y, y + wh, zc, zc + ww), lit if rng.random() < s.style.lit_windows else win))
    if rng.random() < 0.5:  # shop window or door on the ground floor
      ops.append(('p', s.quad_x(x, 0.3, 2.5, zc, zc + ww), win if rng.random() < 0.7 else
                  s.part('door', BUILDING, x, depth_kind=X_PLANE)))
  s.add(1, z0, ops)


def tree(s: Scene, x: float, z: float, layer: int, scale: float = 1.0) -> None:
  rng = s.rng
  trunk, r = rng.uniform(1.5, 3.5) * scale, rng.uniform(1.2, 3.0) * scale
  if s.f * (trunk + r) / z < 2:
    return
  b, k = s.billboard(x, z), s.f / z
  rgb = s.color('vegetation')
  ops = [('l', [b(0, 0), b(0, trunk + r * 0.5)], s.part('trunk', VEGETATION, z), line_width(k, 0.25 * scale))]
  for _ in range(rng.integers(3, 7)):
    rx = r * rng.uniform(0.5, 0.9)
    c = b(r * rng.uniform(-0.7, 0.7), trunk + r * rng.uniform(0.5, 1.3))
    ops.append(('e', box(c, (k * rx, k * rx * rng.uniform(0.7, 1.1))),
                s.part('vegetation', VEGETATION, z, rgb, shade=rng.uniform(0.8, 1.15))))
  s.add(layer, z, ops)


def _trees(s: Scene, x: float, z0: float, z1: float, d: int) -> None:
  """A stretch of trees (and maybe a hedge) along the building line."""
  z = z0 + s.rng.uniform(0, 2)
  while z < z1:
    tree(s, x + d * s.rng.uniform(-0.5, 3.0), z, 1, scale=s.rng.uniform(1.0, 1.8))
    z += s.rng.uniform(2.5, 7)
  if s.rng.random() < 0.4:
    s.add(2, z0, [('p', s.quad_x(x - d, 0, s.rng.uniform(0.8, 2.2), z0, z1),
                   s.part('vegetation', VEGETATION, x - d, depth_kind=X_PLANE))])


def _wall(s: Scene, x: float, z0: float, z1: float, d: int, fence: bool) -> None:
  rng = s.rng
  material, label = ('fence', FENCE) if fence else ('wall', WALL)
  h = rng.uniform(1.0, 2.2) if fence else rng.uniform(0.8, 3.0)
  rgb = s.color(material)
  face = s.part(material, label, x, rgb, depth_kind=X_PLANE)
  trim = s.part(material, label, x, rgb, shade=0.7 if fence else 1.2, depth_kind=X_PLANE)
  ops = [('p', s.quad_z(x, x + d * 0.3, 0, h, z0), s.part(material, label, z0, rgb, shade=0.75)),
         ('p', s.quad_x(x, 0, h, z0, z1), face), ('p', s.quad_x(x, h - 0.15, h, z0, z1), trim)]
  if fence:
    ops.append(('p', s.quad_x(x, 0.2, 0.3, z0, z1), trim))
    for zp in np.arange(z0, z1, rng.uniform(2.0, 3.5)):
      if s.f * abs(x) * (1 / zp - 1 / (zp + 0.12)) < 0.5:
        break
      ops.append(('p', s.quad_x(x, 0, h + 0.1, zp, zp + 0.12), trim))
  elif h < s.hc:
    ops.append(('p', s.quad_y(x, x + d * 0.3, z0, z1, h), s.part(material, label, z0, rgb, shade=1.3)))
  s.add(2, z0, ops)


def far_end(s: Scene, st: Street) -> None:
  """Where the street ends: a row of buildings, trees, or open sky."""
  rng, z = s.rng, st.z_far
  kind = rng.choice(3, p=[0.6, 0.25, 0.15])  # buildings, trees, open
  ops = []
  x = -120.0
  while kind < 2 and x < 120:
    w = rng.uniform(6, 25)
    if kind == 0:
      ops.append(('p', s.quad_z(x, x + w, 0, rng.uniform(6, 40), z), s.part('building', BUILDING, z)))
    else:
      r = rng.uniform(3, 8)
      ops.append(('e', box(s.proj(x + w / 2, r * 1.2, z), (s.f * r / z, s.f * r / z)),
                  s.part('vegetation', VEGETATION, z)))
    x += w
  s.add(1, z, ops)


# ---- appearance -------------------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
  """[h, w] float32 value noise with features about `cell` pixels wide, std about 0.5."""
  small = rng.standard_normal((int(h / cell) + 2, int(w / cell) + 2)).astype(np.float32)
  return 0.7 / max(float(small.std()), 1e-3) * np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def _texture(s: Scene, kind: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  """One texture field, roughly in [-1, 1]; [H, W] (or broadcastable to it)."""
  rng, H, W = s.rng, s.H, s.W
  p = 3.0 * s.style.texture_scale * H / 128  # pattern period, pixels
  if kind == 'noise':
    return np.clip(0.5 * rng.standard_normal((H, W), dtype=np.float32), -1, 1)
  if kind == 'blotch':
    return _smooth_noise(rng, H, W, max(2.0, H / 10))
  if kind == 'leaves':
    return np.tanh(3 * _smooth_noise(rng, H, W, max(1.0, p / 2)))
  if kind in ('hstripes', 'vstripes'):
    return np.tanh(3 * np.sin(2 * np.pi * (yy if kind == 'hstripes' else xx) / (2.5 * p)))
  if kind == 'bricks':
    row = np.floor(yy / p)
    mortar = (yy % p < max(1.0, 0.2 * p)) | ((xx + (row % 2) * p) % (2 * p) < max(1.0, 0.2 * p))
    return np.where(mortar, -1.0, 0.25).astype(np.float32)
  if kind == 'tiles':  # a paving grid on the ground plane, in perspective, faded where tiles get small
    z = s.f * s.hc / np.maximum(yy - s.yh, 0.5)
    x = (xx - s.xv) * z / s.f
    size = s.style.tile_size
    joint = ((x / size) % 1 < 0.1) | ((z / size) % 1 < 0.1)
    fade = np.clip(s.f * s.hc * size / z**2 / 3 - 0.3, 0, 1)
    return (np.where(joint, -1.0, 0.3) * fade).astype(np.float32)
  if kind == 'mesh':
    m = max(2.0, p)
    return np.where(((xx + yy) % m < 1) | ((xx - yy) % m < 1), 0.8, -0.5).astype(np.float32)
  return np.zeros((1, 1), np.float32)


def shade(s: Scene, pid: np.ndarray) -> np.ndarray:
  """The style's appearance of a rasterised scene: [H, W] part ids -> [H, W, 3] uint8 RGB."""
  st, rng, H, W = s.style, s.rng, s.H, s.W
  cols = list(zip(*s.parts))
  color = np.asarray(cols[1], np.float32)  # [P, 3]
  tex, strength = np.asarray(cols[2]), np.asarray(cols[3], np.float32)
  depth, depth_kind, emissive = (np.asarray(c, np.float32) for c in cols[4:7])
  yy = np.arange(H, dtype=np.float32)[:, None] + 0.5  # [H, 1]
  xx = np.arange(W, dtype=np.float32)[None, :] + 0.5  # [1, W]
  rgb = color[pid]  # [H, W, 3]
  kinds = tex[pid]  # [H, W]
  t = np.zeros((H, W), np.float32)
  for k in np.unique(tex[np.unique(pid)]):
    if k:
      t = np.where(kinds == k, _texture(s, TEXTURES[k], yy, xx), t)
  rgb *= (1 + strength[pid] * t)[..., None]
  # Light: exposure, a gradient across the frame, cast shadows; lamps keep their own brightness.
  xn, yn = 2 * xx / W - 1, 2 * yy / H - 1
  angle, grad = rng.uniform(0, 2 * np.pi), st.light_gradient * rng.uniform(0.6, 1.4)
  light = st.light_level * rng.uniform(0.85, 1.15) * (1 + grad * (np.cos(angle) * xn + np.sin(angle) * yn))
  light = np.broadcast_to(np.maximum(light, 0.1), (H, W))
  if s.shadows:
    mask = Image.new('L', (W, H), 0)
    draw = ImageDraw.Draw(mask)
    for poly in s.shadows:
      draw.polygon(poly, fill=255)
    light = np.where(np.asarray(mask) > 0, light * st.shadow_strength, light)
  e = emissive[pid]
  rgb *= (light * (1 - e) + e * st.emissive_gain)[..., None]
  if st.glow > 0:  # halos: the emissive parts' light, blurred, added around them (night)
    lit = Image.fromarray(np.clip(rgb * e[..., None] + 0.5, 0, 255).astype(np.uint8))
    halo = np.asarray(lit.filter(ImageFilter.GaussianBlur(st.glow_radius * H / 128)), np.float32)
    rgb = rgb + st.glow * halo
  if st.fog_visibility > 0:  # fog needs the depth of every pixel
    dk, z = depth_kind[pid], depth[pid]
    z = np.where(dk == GROUND_PLANE, s.f * s.hc / np.maximum(yy - s.yh, 0.5), z)
    z = np.where(dk == X_PLANE, np.clip(s.f * z / (xx - s.xv + 1e-3), 0.5, SKY_DEPTH), z)
    a = np.exp(-z / (st.fog_visibility * rng.uniform(0.7, 1.3)))[..., None]
    rgb = rgb * a + np.asarray(st.fog_color, np.float32) * (1 - a)
  rgb *= np.asarray(st.tint, np.float32)
  gray = rgb.mean(-1, keepdims=True)
  rgb = 128 + st.contrast * (gray + st.saturation * (rgb - gray) - 128)
  if st.gamma != 1:
    rgb = 255 * (np.clip(rgb, 0, 255) / 255) ** st.gamma
  if st.blur > 0:
    img = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
    rgb = np.asarray(img.filter(ImageFilter.GaussianBlur(st.blur * H / 128 * rng.uniform(0.75, 1.25))), np.float32)
  if st.vignetting > 0:
    rgb = rgb * (1 - st.vignetting * 0.5 * (xn**2 + yn**2))[..., None]
  if st.noise > 0:
    rgb = rgb + st.noise * rng.standard_normal((H, W, 3), dtype=np.float32)
  return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def label_map(s: Scene, pid: np.ndarray) -> np.ndarray:
  """[H, W] part ids -> [H, W] uint8 Cityscapes label ids."""
  return np.asarray([p[0] for p in s.parts], np.uint8)[pid]
