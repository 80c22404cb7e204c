"""Street furniture, vehicles and people of the embedded benchmark, and `build`, which puts a whole scene together.

Each function adds the parts of one object to a `synthetic_draw.Scene`, in metres, with the Cityscapes label id of
every part: poles with lamps, traffic lights and signs; cars (body, cabin, windows, wheels), trucks (cab and cargo
box), buses and trams (long boxes with window bands); persons (head, torso, arms, legs), riders on bicycles and
motorcycles. Sizes follow depth through the camera; the style sets how many there are and their scale. Shapes are
the same in every style.
"""

from __future__ import annotations

import numpy as np

from rtda_jax.data import synthetic_draw as draw
from rtda_jax.data.synthetic_draw import (BICYCLE, BUS, CAR, EGO, LIGHT, MOTORCYCLE, PERSON, POLE, RIDER, SIGN, STATIC,
                                          TRAIN, TRUCK, Op, Scene, Street, between, box, line_width, loguniform, tree)


def build(s: Scene) -> None:
  """Adds a whole street scene to `s`."""
  street = draw.layout(s)
  draw.sky_and_ground(s, street)
  for side in (-1, 1):
    draw.roadside(s, street, side)
  draw.far_end(s, street)
  furniture(s, street)
  _traffic(s, street)
  _pedestrians(s, street)
  if s.style.ego_vehicle:
    top = s.H * (1 - s.rng.uniform(0.04, 0.08))
    pts = [(x, top + (s.H - top) * 0.6 * ((x - s.W / 2) / (s.W / 2)) ** 2) for x in np.linspace(0, s.W, 9)]
    s.add(4, 0.0, [('p', pts + [(s.W, s.H), (0, s.H)], s.part('ego', EGO, 2.0))])


# ---- street furniture: poles, traffic lights, signs, trees, static clutter --------------------------------------

def furniture(s: Scene, st: Street) -> None:
  """Poles (street lamps, traffic lights, signs), trees on the sidewalks, bins and bollards."""
  rng, style = s.rng, s.style
  for d in (-1, 1):
    z = s.z_min * rng.uniform(0.9, 3.0)
    while z < 110:
      _pole(s, st.edge[d] + d * rng.uniform(0.3, 0.8), z, d)
      z += rng.uniform(*style.pole_spacing)
    for _ in range(rng.poisson(style.counts['tree'] / 2)):
      tree(s, st.walk[d] - d * rng.uniform(0.3, 1.0), loguniform(rng, s.z_min, 80), 3)
  for _ in range(rng.poisson(style.counts['sign'])):
    d = rng.choice([-1, 1])
    _pole(s, st.edge[d] + d * rng.uniform(0.3, 1.2), loguniform(rng, s.z_min * 1.2, 60), d, kind=2, h=3.0)
  for _ in range(rng.poisson(style.counts['static'])):  # bins and bollards: label 'static'
    d = rng.choice([-1, 1])
    x, z = between(rng, st.edge[d], st.walk[d]), loguniform(rng, s.z_min * 1.1, 60)
    w, h = (0.6, 1.0) if rng.random() < 0.5 else (0.2, 0.9)
    b = s.billboard(x, z)
    s.add(3, z, [('p', [b(-w / 2, 0), b(w / 2, 0), b(w / 2, h), b(-w / 2, h)], s.part('static', STATIC, z))])


def _pole(s: Scene, x: float, z: float, d: int, kind: int | None = None, h: float | None = None) -> None:
  """A pole: 0 street light, 1 traffic light, 2 sign, 3 plain."""
  rng = s.rng
  h = rng.uniform(4.5, 8.5) if h is None else h
  k = s.f / z
  if k * h < 3:
    return
  kind = rng.choice(4, p=[0.35, 0.3, 0.25, 0.1]) if kind is None else kind
  b, pole = s.billboard(x, z), s.part('pole', POLE, z)
  ops = [('l', [b(0, 0), b(0, h)], pole, line_width(k, 0.16))]
  if kind == 0:
    end = b(-d * 1.8, h + 0.3)
    ops += [('l', [b(0, h), end], pole, line_width(k, 0.08)),
            ('e', box(end, (k * 0.3, k * 0.12)), s.part('lamp', POLE, z, emissive=s.style.lamps_lit))]
  elif kind == 1:
    if rng.random() < 0.4:  # hanging over the road on an arm
      reach = rng.uniform(2, 5)
      ops.append(('l', [b(0, h - 0.2), b(-d * reach, h - 0.2)], pole, line_width(k, 0.12)))
      _traffic_light(s, ops, b(-d * reach, h - 0.9), k, z)
    _traffic_light(s, ops, b(0.3 * -d, h - 0.8), k, z)
  elif kind == 2:
    for y in (rng.uniform(2.1, 2.6),) + ((rng.uniform(1.4, 1.7),) if rng.random() < 0.3 else ()):
      _sign(s, ops, b(0, y), k * rng.uniform(0.28, 0.42), z)
  s.add(3, z, ops)


def _traffic_light(s: Scene, ops: list, c: tuple[float, float], k: float, z: float) -> None:
  housing = s.part('tl_housing', LIGHT, z)
  ops.append(('p', [(c[0] - 0.18 * k, c[1] - 0.48 * k), (c[0] + 0.18 * k, c[1] - 0.48 * k),
                    (c[0] + 0.18 * k, c[1] + 0.48 * k), (c[0] - 0.18 * k, c[1] + 0.48 * k)], housing))
  if s.rng.random() < 0.25:
    return  # seen from behind
  on = s.rng.integers(3)
  colors = s.style.palette['tl_lamp']
  for i in range(3):
    part = (s.part('tl_lamp', LIGHT, z, np.asarray(colors[i % len(colors)], float), emissive=True) if i == on else
            s.part('tl_housing', LIGHT, z, shade=0.6))
    ops.append(('e', box((c[0], c[1] + (i - 1) * 0.3 * k), (0.11 * k, 0.11 * k)), part))


def _sign(s: Scene, ops: list, c: tuple[float, float], r: float, z: float) -> None:
  u, v = c
  if s.rng.random() < 0.25:  # the back of a sign
    ops.append(('e', box(c, (r, r)), s.part('sign_back', SIGN, z)))
    return
  border, face = s.part('sign_border', SIGN, z), s.part('sign_face', SIGN, z)
  shape = s.rng.integers(4)
  for part, q in ((border, 1.0), (face, 0.72)):
    if shape == 0:
      ops.append(('e', box(c, (r * q, r * q)), part))
    elif shape == 1:
      ops.append(('p', [(u, v - r * q), (u + r * q, v + 0.75 * r * q), (u - r * q, v + 0.75 * r * q)], part))
    elif shape == 2:
      ops.append(('p', [(u - r * q, v - 0.7 * r * q), (u + r * q, v - 0.7 * r * q), (u + r * q, v + 0.7 * r * q),
                        (u - r * q, v + 0.7 * r * q)], part))
    else:
      ops.append(('p', [(u, v - r * q), (u + r * q, v), (u, v + r * q), (u - r * q, v)], part))


# ---- vehicles (and riders, who share the lanes) --------------------------------------------------------------------

def _traffic(s: Scene, st: Street) -> None:
  rng, style, n = s.rng, s.style, len(st.lanes)
  busy = {i: [] for i in range(n)}  # lane -> occupied (z0, z1)
  middle = (st.edge[-1] + st.edge[1]) / 2

  def place(i: int, z0: float, length: float) -> bool:
    if any(z0 < b + 1 and z0 + length + 1 > a for a, b in busy[i]):
      return False
    busy[i].append((z0, z0 + length))
    return True

  for d in (-1, 1):  # parked cars along the kerb, in the outer lane
    if st.parked[d]:
      z, lane = s.z_min * rng.uniform(0.8, 2.0), 0 if d < 0 else n - 1
      for _ in range(rng.poisson(style.counts['parked_car'])):
        length = 4.8 * style.object_scale
        place(lane, z, length)
        _car(s, st.edge[d] - d * (0.3 + 0.9 * style.object_scale), z, oncoming=d < 0 and rng.random() < 0.5)
        z += length + rng.uniform(0.5, 8)
  if st.tram is not None:
    length, i = rng.uniform(22, 36), int(np.argmin([abs(x - st.tram) for x in st.lanes]))
    z0 = loguniform(rng, max(1.3 * s.z_min, 6.0), 45)
    busy[i].append((z0, z0 + length))
    _tram(s, st.tram, z0, length, oncoming=n > 1 and st.tram < middle)
  if st.crosswalk is not None:  # traffic stops for the people crossing
    for i in range(n):
      busy[i].append((st.crosswalk - 1, st.crosswalk + 3))
  for motor, key in ((False, 'bicycle_rider'), (True, 'motorcycle_rider')):
    for _ in range(rng.poisson(style.counts[key])):
      for _ in range(6):
        i, z0 = rng.integers(n), loguniform(rng, 1.1 * s.z_min, 60)
        if place(i, z0, 2.0):
          _two_wheeler(s, st.lanes[i] + rng.uniform(-1.0, 1.0), z0, motor, rider=True, side_view=rng.random() < 0.4)
          break
  for kind, add_vehicle, length in (('bus', _bus, 13.0), ('truck', _truck, 11.0), ('car', _car, 4.8)):
    for _ in range(rng.poisson(style.counts[kind])):
      for _ in range(6):
        i, z0 = rng.integers(n), loguniform(rng, max(1.05 * s.z_min, 3.0), 90)
        if place(i, z0, length * style.object_scale):
          add_vehicle(s, st.lanes[i] + rng.uniform(-0.4, 0.4), z0, oncoming=n > 1 and st.lanes[i] < middle)
          break


def _side_x(x0: float, x1: float) -> float | None:
  """X of the box side the camera sees (a box left of the camera shows its right side), or None."""
  return x0 if x0 > 0 else (x1 if x1 < 0 else None)


def _car(s: Scene, xc: float, z0: float, oncoming: bool) -> None:
  rng = s.rng
  sc = s.style.object_scale * rng.uniform(0.9, 1.1)
  w, L, y0, y1, y2 = 1.8 * sc, rng.uniform(3.8, 4.8) * sc, 0.25 * sc, 0.9 * sc, rng.uniform(1.35, 1.55) * sc
  if s.f * w / z0 < 2:
    return
  x0, x1, z1, ins = xc - w / 2, xc + w / 2, z0 + L, 0.12 * w
  paint = s.color('car_paint')
  body, dark = s.part('car_paint', CAR, z0, paint), s.part('car_paint', CAR, z0, paint, 0.78)
  glass, tyre = s.part('glass', CAR, z0), s.part('tyre', CAR, z0)
  c0, c1 = (z0 + 0.3 * L, z1 - 0.2 * L) if oncoming else (z0 + 0.22 * L, z1 - 0.3 * L)  # cabin; the hood is longer
  ops = []
  xs = _side_x(x0, x1)
  if xs is not None:
    xi, zm = xs + (ins if xs == x0 else -ins), (c0 + c1) / 2
    ops += [('p', s.quad_x(xi, y1, y2, c0, c1), dark),  # cabin side with two windows, then the body side
            ('p', s.quad_x(xi, y1 + 0.06, y2 - 0.06, c0 + 0.1, zm - 0.05), glass),
            ('p', s.quad_x(xi, y1 + 0.06, y2 - 0.06, zm + 0.05, c1 - 0.1), glass),
            ('p', s.quad_x(xs, y0, y1, z0, z1), dark)]
    ops += [('p', s.disc_x(xs, 0.33 * sc, zw, 0.33 * sc), tyre) for zw in (z0 + 0.18 * L, z1 - 0.18 * L)]
  ops += [('p', s.quad_z(xa, xa + 0.3 * sc, 0, y0 + 0.1, z0 + 0.5), tyre) for xa in (x0 + 0.05, x1 - 0.05 - 0.3 * sc)]
  if y1 < s.hc:  # trunk or hood lid
    ops.append(('p', s.quad_y(x0, x1, z0, c0 - 0.3, y1), s.part('car_paint', CAR, z0, paint, 1.12)))
  p = s.proj
  ops.append(('p', [p(x0 + ins, y1, c0 - 0.3), p(x1 - ins, y1, c0 - 0.3), p(x1 - ins, y2, c0 + 0.25),
                    p(x0 + ins, y2, c0 + 0.25)], body))  # the sloping rear (or front) of the cabin
  g = ins + 0.08
  ops.append(('p', [p(x0 + g, y1 + 0.05, c0 - 0.25), p(x1 - g, y1 + 0.05, c0 - 0.25), p(x1 - g, y2 - 0.06, c0 + 0.2),
                    p(x0 + g, y2 - 0.06, c0 + 0.2)], glass))
  if y2 < s.hc:
    ops.append(('p', s.quad_y(x0 + ins, x1 - ins, c0 + 0.25, c1, y2), s.part('car_paint', CAR, z0, paint, 1.15)))
  light = s.part('head_light' if oncoming else 'tail_light', CAR, z0, emissive=True)
  ops.append(('p', s.quad_z(x0, x1, y0, y1, z0), body))
  ops += [('p', s.quad_z(xa, xa + 0.3 * sc, y1 - 0.25 * sc, y1 - 0.1 * sc, z0), light)
          for xa in (x0 + 0.06, x1 - 0.06 - 0.3 * sc)]
  ops.append(('p', s.quad_z(xc - 0.26, xc + 0.26, y0 + 0.1, y0 + 0.24, z0), s.part('plate', CAR, z0)))
  s.add(3, z0, ops)


def _near_face_lights(s: Scene, ops: list, x0: float, x1: float, y: float, z: float, label: int, front: bool):
  light = s.part('head_light' if front else 'tail_light', label, z, emissive=True)
  ops += [('p', s.quad_z(xa, xa + 0.3, y, y + 0.2, z), light) for xa in (x0 + 0.1, x1 - 0.4)]


def _truck(s: Scene, xc: float, z0: float, oncoming: bool) -> None:
  rng = s.rng
  sc = s.style.object_scale * rng.uniform(0.9, 1.1)
  w, y0 = 2.45 * sc, 0.5 * sc
  lc, hc = rng.uniform(5.5, 8.5) * sc, rng.uniform(3.2, 3.9) * sc  # cargo box length and height
  lk, hk = 2.3 * sc, 2.9 * sc  # cab
  if s.f * w / z0 < 2:
    return
  x0, x1 = xc - w / 2, xc + w / 2
  cab = (z0, z0 + lk) if oncoming else (z0 + lc + 0.2, z0 + lc + 0.2 + lk)
  cargo = (z0 + lk + 0.2, z0 + lk + 0.2 + lc) if oncoming else (z0, z0 + lc)
  dark, glass, tyre = s.part('tyre', TRUCK, z0, shade=1.3), s.part('glass', TRUCK, z0), s.part('tyre', TRUCK, z0)
  xs, ops = _side_x(x0, x1), []
  boxes = [(cab, hk, True), (cargo, hc, False)]
  for (za, zb), top, is_cab in sorted(boxes, key=lambda b: -b[0][0]):  # far box first
    rgb = s.color('truck_paint')
    if xs is not None:
      ops.append(('p', s.quad_x(xs, y0, top, za, zb), s.part('truck_paint', TRUCK, z0, rgb, 0.78)))
      if is_cab:
        zw = za + 0.2 if oncoming else zb - 1.3 * sc
        ops.append(('p', s.quad_x(xs, 1.7 * sc, top - 0.3 * sc, zw, zw + 1.1 * sc), glass))
    ops.append(('p', s.quad_z(x0, x1, y0, top, za), s.part('truck_paint', TRUCK, z0, rgb)))
    if is_cab and oncoming:
      ops += [('p', s.quad_z(x0 + 0.15, x1 - 0.15, 1.6 * sc, top - 0.25 * sc, za), glass),
              ('p', s.quad_z(xc - 0.6, xc + 0.6, 0.7 * sc, 1.3 * sc, za), dark)]
      _near_face_lights(s, ops, x0, x1, 0.7 * sc, za, TRUCK, True)
    elif not is_cab and not oncoming:
      ops.append(('p', s.quad_z(xc - 0.04, xc + 0.04, y0 + 0.1, top - 0.1, za), dark))
      _near_face_lights(s, ops, x0, x1, 0.65 * sc, za, TRUCK, False)
  if xs is not None:
    z_end = max(cab[1], cargo[1])
    ops.append(('p', s.quad_x(xs, 0.3 * sc, y0, z0, z_end), dark))
    for zw in ((cab[0] + cab[1]) / 2, cargo[1] - 1.0 * sc, cargo[1] - 2.1 * sc):
      ops.append(('p', s.disc_x(xs, 0.5 * sc, zw, 0.5 * sc), tyre))
  ops += [('p', s.quad_z(xa, xa + 0.4 * sc, 0, y0 + 0.1, z0 + 0.6), tyre) for xa in (x0 + 0.05, x1 - 0.05 - 0.4 * sc)]
  ops.append(('p', s.quad_z(x0, x1, 0.3 * sc, y0, z0), dark))
  s.add(3, z0, ops)


def _long_vehicle(s: Scene, xc: float, z0: float, length: float, oncoming: bool, label: int) -> None:
  """A bus or a tram: a long box with a band of windows, doors, and a windscreen or rear window."""
  rng = s.rng
  sc = s.style.object_scale * rng.uniform(0.95, 1.05)
  tram = label == TRAIN
  w, h, y0 = (2.6 if tram else 2.55) * sc, rng.uniform(3.3, 3.7) if tram else rng.uniform(3.0, 3.4), 0.3 * sc
  h *= sc
  if s.f * w / z0 < 2:
    return
  x0, x1, z1 = xc - w / 2, xc + w / 2, z0 + length
  material = 'train_paint' if tram else 'bus_paint'
  rgb = s.color(material)
  body, dark = s.part(material, label, z0, rgb), s.part(material, label, z0, rgb, 0.75)
  glass, tyre = s.part('glass', label, z0), s.part('tyre', label, z0)
  xs, ops = _side_x(x0, x1), []
  if tram:  # pantograph on the roof
    zp = z0 + 0.35 * length
    ops.append(('l', [s.proj(xc, h, zp), s.proj(xc, h + 0.9, zp + 1), s.proj(xc, h + 0.9, zp + 2.5)], tyre,
                line_width(s.f / zp, 0.08)))
  if xs is not None:
    ops += [('p', s.quad_x(xs, y0, h, z0, z1), dark),
            ('p', s.quad_x(xs, 1.2 * sc, h - 0.5 * sc, z0 + 0.6, z1 - 0.6), glass)]
    for zp in np.arange(z0 + 0.6, z1 - 0.6, (2.0 if tram else 1.6) * sc):
      if s.f * abs(xs) * (1 / zp - 1 / (zp + 0.15)) < 0.4:
        break
      ops.append(('p', s.quad_x(xs, 1.2 * sc, h - 0.5 * sc, zp, zp + 0.15 * sc), dark))
    for zd in np.arange(z0 + 1.5 * sc, z1 - 2, (7.0 if tram else 5.0) * sc):
      ops.append(('p', s.quad_x(xs, y0 + 0.1, h - 0.5 * sc, zd, zd + 1.2 * sc), glass))
    if tram:
      ops.append(('p', s.quad_x(xs, y0, 0.75 * sc, z0, z1), tyre))
    else:
      ops += [('p', s.disc_x(xs, 0.5 * sc, zw, 0.5 * sc), tyre) for zw in (z0 + 2.2 * sc, z1 - 2.6 * sc)]
  if not tram:
    ops += [('p', s.quad_z(xa, xa + 0.4 * sc, 0, y0 + 0.1, z0 + 0.6), tyre) for xa in (x0 + 0.05, x1 - 0.45 * sc)]
  ops.append(('p', s.quad_z(x0, x1, y0, h, z0), body))
  if oncoming or tram:
    ops += [('p', s.quad_z(x0 + 0.15, x1 - 0.15, 1.05 * sc, h - 0.42 * sc, z0), glass),
            ('p', s.quad_z(x0 + 0.35, x1 - 0.35, h - 0.36 * sc, h - 0.1 * sc, z0), s.part('display', label, z0,
                                                                                          emissive=True))]
  else:
    ops.append(('p', s.quad_z(x0 + 0.25, x1 - 0.25, 2.0 * sc, h - 0.3 * sc, z0), glass))
  _near_face_lights(s, ops, x0, x1, 0.55 * sc, z0, label, oncoming or tram)
  s.add(3, z0, ops)


def _bus(s: Scene, xc: float, z0: float, oncoming: bool) -> None:
  _long_vehicle(s, xc, z0, s.rng.uniform(10, 13) * s.style.object_scale, oncoming, BUS)


def _tram(s: Scene, xc: float, z0: float, length: float, oncoming: bool) -> None:
  _long_vehicle(s, xc, z0, length, oncoming, TRAIN)


# ---- people and two-wheelers ------------------------------------------------------------------------------------

def _pedestrians(s: Scene, st: Street) -> None:
  rng, counts = s.rng, s.style.counts
  for _ in range(rng.poisson(counts['person'])):
    d, z = rng.choice([-1, 1]), loguniform(rng, 1.1 * s.z_min, 70)
    x = between(rng, st.edge[d], st.walk[d])
    for j in range(1 + (rng.random() < 0.3) * rng.integers(1, 3)):  # sometimes a group
      _person(s, x + 0.6 * j * rng.choice([-1, 1]), z + rng.uniform(-0.8, 0.8) * j)
  if st.crosswalk is not None:
    for _ in range(rng.poisson(1.5)):
      _person(s, rng.uniform(st.edge[-1], st.edge[1]), st.crosswalk + rng.uniform(0.3, 2.7))
  for motor, key in ((False, 'bicycle'), (True, 'motorcycle')):  # parked on the sidewalk
    for _ in range(rng.poisson(counts[key])):
      d = rng.choice([-1, 1])
      _two_wheeler(s, between(rng, st.edge[d], st.walk[d]), loguniform(rng, 1.1 * s.z_min, 50), motor, False, True)


def _person(s: Scene, x: float, z: float) -> None:
  rng = s.rng
  h = rng.uniform(1.55, 1.95) * s.style.object_scale * (0.7 if rng.random() < 0.1 else 1.0)
  k = s.f / z * h / 1.75  # pixels per metre of a 1.75 m reference person
  if k * 1.75 < 4:
    return
  b = s.billboard(x, z, h / 1.75)
  skin, top, legs, hair = (s.part(m, PERSON, z) for m in ('skin', 'clothes', 'clothes', 'hair'))
  view, wl, wa = rng.integers(3), line_width(k, 0.15), line_width(k, 0.09)  # front, back, side
  if view < 2:
    sp = rng.uniform(0, 0.12)
    ops = [('l', [b(-0.1, 0.92), b(-0.12 - sp, 0.03)], legs, wl), ('l', [b(0.1, 0.92), b(0.12 + sp, 0.03)], legs, wl),
           ('l', [b(-0.21, 1.38), b(-0.28, 0.9)], top, wa), ('l', [b(0.21, 1.38), b(0.28, 0.9)], top, wa),
           ('p', [b(-0.19, 0.86), b(0.19, 0.86), b(0.23, 1.44), b(-0.23, 1.44)], top),
           ('e', box(b(0, 1.6), (k * 0.1, k * 0.125)), skin if view == 0 else hair)]
    if view == 0:
      ops.append(('e', box(b(0, 1.67), (k * 0.105, k * 0.065)), hair))
  else:
    f, sp = rng.choice([-1, 1]), rng.uniform(0.05, 0.3)
    ops = [('l', [b(0, 0.92), b(f * sp, 0.03)], legs, wl), ('l', [b(0, 0.92), b(-f * sp, 0.03)], legs, wl),
           ('p', [b(-0.12, 0.86), b(0.12, 0.86), b(0.13, 1.44), b(-0.13, 1.44)], top),
           ('l', [b(0, 1.38), b(-f * sp * 0.8, 0.92)], top, wa),
           ('e', box(b(0.02 * f, 1.6), (k * 0.095, k * 0.125)), skin),
           ('e', box(b(-0.02 * f, 1.66), (k * 0.095, k * 0.07)), hair)]
  if rng.random() < 0.2:  # a bag
    ops.append(('p', [b(0.2, 0.85), b(0.45, 0.85), b(0.45, 1.15), b(0.2, 1.15)], s.part('clothes', PERSON, z)))
  s.add(3, z, ops)


def _two_wheeler(s: Scene, x: float, z: float, motor: bool, rider: bool, side_view: bool) -> None:
  """A bicycle or motorcycle, seen from the side or from behind, with or without its rider."""
  rng = s.rng
  sc = s.style.object_scale * rng.uniform(0.9, 1.1)
  k = s.f / z * sc
  if k * 1.2 < 4:
    return
  b = s.billboard(x, z, sc, rng.choice([-1, 1]))
  label = MOTORCYCLE if motor else BICYCLE
  tyre, frame = s.part('tyre', label, z), s.part('bike_paint', label, z)
  ops: list[Op] = []
  if side_view and motor:
    for cx in (-0.7, 0.7):
      ops += [('e', box(b(cx, 0.32), (k * 0.32, k * 0.32)), tyre), ('e', box(b(cx, 0.32), (k * 0.12, k * 0.12)), frame)]
    ops += [('p', [b(-0.25, 0.3), b(0.25, 0.3), b(0.25, 0.55), b(-0.25, 0.55)], tyre),
            ('p', [b(-0.8, 0.85), b(-0.75, 0.55), b(-0.3, 0.45), b(0.35, 0.42), b(0.6, 0.6), b(0.55, 0.92),
                   b(0.2, 0.98), b(-0.25, 0.84)], frame),
            ('l', [b(0.7, 0.32), b(0.5, 1.05)], frame, line_width(k, 0.07)),
            ('p', [b(-0.6, 0.86), b(0.1, 0.9), b(0.05, 1.0), b(-0.55, 0.98)], tyre)]
  elif side_view:
    wl = line_width(k, 0.05)
    ops += [('r', box(b(cx, 0.34), (k * 0.34, k * 0.34)), tyre, line_width(k, 0.06)) for cx in (-0.52, 0.52)]
    ops += [('l', [b(-0.52, 0.34), b(-0.18, 0.92), b(0, 0.32), b(-0.52, 0.34)], frame, wl),
            ('l', [b(0, 0.32), b(0.42, 0.95), b(0.52, 0.34)], frame, wl),
            ('l', [b(-0.18, 0.92), b(0.42, 0.95)], frame, wl),
            ('l', [b(0.42, 0.95), b(0.38, 1.08), b(0.28, 1.1)], frame, wl),  # handlebar
            ('l', [b(-0.3, 0.96), b(-0.08, 0.96)], tyre, wl)]  # saddle
  elif motor:
    ops += [('e', box(b(0, 0.31), (k * 0.09, k * 0.31)), tyre),
            ('p', [b(-0.25, 0.45), b(0.25, 0.45), b(0.25, 0.95), b(-0.25, 0.95)], frame),
            ('l', [b(-0.42, 1.05), b(0.42, 1.05)], frame, line_width(k, 0.05)),
            ('p', [b(-0.1, 0.75), b(0.1, 0.75), b(0.1, 0.85), b(-0.1, 0.85)],
             s.part('tail_light', label, z, emissive=True))]
  else:
    ops += [('e', box(b(0, 0.34), (k * 0.035, k * 0.34)), tyre),
            ('l', [b(-0.3, 1.0), b(0.3, 1.0)], frame, line_width(k, 0.05))]
  if rider:
    _rider(s, ops, b, k, z, motor, side_view)
  s.add(3, z, ops)


def _rider(s: Scene, ops: list, b, k: float, z: float, motor: bool, side_view: bool) -> None:
  top, legs, skin = (s.part(m, RIDER, z) for m in ('clothes', 'clothes', 'skin'))
  helmet = motor or s.rng.random() < 0.3
  head, r = (s.part('helmet', RIDER, z), 0.14) if helmet else (skin, 0.11)
  wl, wa = line_width(k, 0.15), line_width(k, 0.09)
  if side_view:
    hip, sh, hand, knee, foot, hd = (((-0.25, 1.0), (0.12, 1.5), (0.5, 1.08), (0.2, 0.85), (0.0, 0.45), (0.22, 1.68))
                                     if motor else
                                     ((-0.18, 1.0), (0.12, 1.52), (0.38, 1.08), (0.14, 0.7), (0.05, 0.25), (0.22, 1.7)))
    ops += [('l', [b(*hip), b(*knee), b(*foot)], legs, wl), ('l', [b(*hip), b(*sh)], top, line_width(k, 0.3)),
            ('l', [b(*sh), b(*hand)], top, wa), ('e', box(b(*hd), (k * r, k * r)), head)]
    hair_at = b(hd[0] - 0.02, hd[1] + 0.05)
  else:
    ops += [('l', [b(-0.14, 0.98), b(-0.24, 0.62), b(-0.2, 0.3)], legs, wl),
            ('l', [b(0.14, 0.98), b(0.24, 0.62), b(0.2, 0.3)], legs, wl),
            ('p', [b(-0.2, 0.92), b(0.2, 0.92), b(0.23, 1.5), b(-0.23, 1.5)], top),
            ('l', [b(-0.21, 1.44), b(-0.32, 1.02)], top, wa), ('l', [b(0.21, 1.44), b(0.32, 1.02)], top, wa),
            ('e', box(b(0, 1.66), (k * r, k * r * 1.1)), head)]
    hair_at = b(0, 1.71)
  if not helmet:
    ops.append(('e', box(hair_at, (k * 0.11, k * 0.07)), s.part('hair', RIDER, z)))
