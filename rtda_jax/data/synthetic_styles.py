"""How each domain of the embedded benchmark looks and what its streets hold: `Style`, the palettes and textures, and
the named styles (`STYLES`). Imports nothing from the drawing code, so the generator's modules import one way:
synthetic -> synthetic_objects -> synthetic_draw -> synthetic_styles.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

RGB = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Style:
  """How one domain looks (palette, textures, light, sensor) and what its streets hold (layout statistics)."""
  name: str
  palette: Mapping[str, tuple[RGB, ...]]  # material -> base colours; each instance picks one and jitters it
  textures: Mapping[str, tuple[str, float]]  # material -> (synthetic_draw.TEXTURES kind, strength); default flat
  color_jitter: float = 14.0  # std of the per-instance RGB offset
  brightness_jitter: float = 0.12  # std of the per-instance brightness factor
  texture_scale: float = 1.0  # period of the screen-space textures, relative
  tile_size: float = 0.6  # paving tiles, metres
  light_level: float = 1.0  # exposure
  light_gradient: float = 0.0  # brightness change from one side of the frame to the centre, relative
  shadow_prob: float = 0.0  # chance of building shadows across the street
  shadow_strength: float = 0.6  # brightness factor inside a shadow
  emissive_gain: float = 1.0  # brightness of lamps, lit windows, vehicle lights
  lamps_lit: bool = False  # street lamps glow (are emissive) as at night
  lit_windows: float = 0.08  # chance that a window is lit
  glow: float = 0.0  # halo around every emissive part (lamps, lit windows, vehicle lights): gain of its blurred light
  glow_radius: float = 3.0  # Gaussian radius of the halo in pixels at 128 rows (scales with the height)
  fog_visibility: float = 0.0  # metres; 0 = clear air
  fog_color: RGB = (200, 200, 200)
  tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gain
  saturation: float = 1.0
  contrast: float = 1.0
  gamma: float = 1.0
  blur: float = 0.0  # Gaussian blur radius in pixels at 128 rows (scales with the height)
  vignetting: float = 0.0  # brightness lost in the corners
  noise: float = 0.0  # sensor noise std, in 0..255 units
  # Layout statistics.
  horizon: tuple[float, float] = (0.35, 0.5)  # horizon row / height (a camera pitched down: a higher horizon)
  camera_height: tuple[float, float] = (1.4, 1.8)  # metres above the road
  focal: tuple[float, float] = (0.8, 1.0)  # focal length / width: a longer lens makes everything bigger
  object_scale: float = 1.0  # size of vehicles, people and two-wheelers
  road_width: tuple[float, float] = (6.0, 14.0)
  sidewalk_width: tuple[float, float] = (1.5, 4.5)
  building_height: tuple[float, float] = (6.0, 30.0)
  side_probs: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(
      building=0.6, vegetation=0.15, wall=0.1, fence=0.1, gap=0.05))  # what lines the street, per stretch
  counts: Mapping[str, float] = dataclasses.field(default_factory=dict)  # mean number per image (train: a chance)
  pole_spacing: tuple[float, float] = (15.0, 40.0)  # metres between poles along each side
  crosswalk: float = 0.3  # chance of a zebra crossing
  parking: float = 0.5  # chance that cars park along a side
  ego_vehicle: bool = False  # the recording car's bonnet at the bottom (label 'ego vehicle', ignored)
  terrain: bool = True  # False: no terrain pixels (SYNTHIA's classes): open ground and verges are bare 'ground'


# ---- palettes -------------------------------------------------------------------------------------------------------
# Materials, not classes: 'glass' is in windows, cars, buses and trams; 'clothes' in persons and riders; 'tyre' in every
# vehicle. The target palette moves each class elsewhere in colour space (a dark-blue sky becomes overcast white, dark
# asphalt a lighter purple-grey, light paving dark red-brown pavers, vivid greens dark olive), so the source's colour
# cues mislead on the target while shapes and context stay the same.

GTA5_PALETTE: dict[str, tuple[RGB, ...]] = {
    'sky': ((80, 150, 235), (110, 175, 245), (60, 130, 225), (140, 195, 250)),
    'cloud': ((240, 242, 250), (225, 230, 240)),
    'road': ((70, 68, 76), (88, 84, 90), (60, 62, 70)),
    'marking': ((235, 235, 225), (245, 205, 60)),
    'sidewalk': ((190, 175, 155), (175, 170, 165), (205, 185, 160)),
    'curb': ((205, 205, 200), (180, 175, 170)),
    'parking': ((105, 100, 110),), 'rail': ((130, 110, 90),), 'ground': ((160, 135, 100), (140, 120, 95)),
    'terrain': ((135, 175, 60), (165, 160, 85), (110, 155, 55)),
    'building': ((185, 95, 60), (215, 185, 135), (150, 65, 50), (115, 140, 175), (225, 215, 195), (175, 125, 85),
                 (95, 110, 85)),
    'window': ((60, 95, 130), (40, 55, 75), (120, 165, 195)), 'window_lit': ((250, 220, 140),),
    'door': ((95, 60, 40), (60, 62, 72)),
    'wall': ((205, 195, 175), (165, 155, 145), (195, 125, 90)),
    'fence': ((145, 110, 75), (95, 95, 100), (65, 115, 65)),
    'pole': ((115, 115, 120), (65, 65, 68), (155, 155, 150)), 'lamp': ((255, 245, 210),),
    'tl_housing': ((40, 40, 42), (205, 175, 35)), 'tl_lamp': ((255, 40, 30), (255, 200, 0), (40, 235, 90)),
    'sign_face': ((235, 35, 35), (35, 85, 205), (245, 220, 40), (245, 245, 245)),
    'sign_border': ((245, 245, 245), (225, 35, 35)), 'sign_back': ((150, 150, 150), (120, 120, 125)),
    'vegetation': ((60, 145, 40), (95, 165, 50), (40, 115, 45)), 'trunk': ((105, 75, 45), (85, 65, 45)),
    'skin': ((235, 195, 165), (190, 140, 105), (125, 85, 60)), 'hair': ((40, 30, 25), (120, 80, 40), (210, 180, 110)),
    'clothes': ((205, 40, 40), (40, 65, 165), (30, 30, 32), (235, 235, 235), (60, 145, 60), (235, 185, 40),
                (125, 80, 165), (90, 60, 40)),
    'helmet': ((30, 30, 30), (230, 230, 230), (210, 40, 40)),
    'car_paint': ((205, 30, 30), (30, 65, 185), (240, 240, 240), (30, 30, 35), (235, 205, 40), (150, 150, 160),
                  (40, 135, 60), (230, 120, 30)),
    'truck_paint': ((225, 225, 220), (205, 125, 40), (60, 95, 155), (185, 40, 40)),
    'bus_paint': ((235, 195, 40), (205, 40, 40), (40, 105, 195), (240, 240, 240)),
    'train_paint': ((225, 225, 225), (205, 40, 50), (40, 155, 95), (235, 205, 60)),
    'bike_paint': ((205, 30, 30), (30, 30, 30), (40, 95, 205), (230, 230, 230), (235, 205, 40)),
    'tyre': ((28, 28, 30), (40, 40, 42)), 'glass': ((55, 80, 105), (35, 45, 60), (90, 115, 140)),
    'head_light': ((250, 250, 225),), 'tail_light': ((235, 30, 30),), 'plate': ((235, 235, 225), (240, 210, 50)),
    'display': ((255, 160, 30),), 'static': ((95, 95, 100), (45, 115, 55), (150, 130, 90)), 'ego': ((30, 30, 35),),
}

CITYSCAPES_PALETTE: dict[str, tuple[RGB, ...]] = {
    'sky': ((210, 218, 228), (195, 205, 218), (225, 228, 232), (175, 190, 210)),
    'cloud': ((232, 234, 238),),
    'road': ((116, 111, 122), (126, 120, 130), (104, 101, 112)),
    'marking': ((210, 210, 205),),
    'sidewalk': ((120, 96, 94), (138, 116, 108), (104, 92, 96)),
    'curb': ((150, 148, 145),),
    'parking': ((120, 112, 115),), 'rail': ((95, 85, 80),), 'ground': ((125, 110, 90),),
    'terrain': ((125, 128, 82), (145, 132, 98), (100, 112, 72)),
    'building': ((152, 146, 136), (176, 170, 160), (122, 116, 110), (160, 148, 128), (96, 96, 102), (190, 184, 172)),
    'window': ((48, 54, 60), (82, 88, 95), (30, 34, 40)), 'window_lit': ((235, 215, 160),),
    'door': ((72, 60, 55),),
    'wall': ((142, 140, 134), (116, 110, 100), (170, 165, 155)),
    'fence': ((92, 96, 90), (132, 126, 114), (70, 70, 75)),
    'pole': ((92, 96, 92), (140, 140, 136), (70, 75, 80)), 'lamp': ((230, 225, 200),),
    'tl_housing': ((32, 32, 32), (60, 60, 58)), 'tl_lamp': ((220, 70, 55), (225, 175, 50), (90, 205, 130)),
    'sign_face': ((195, 55, 50), (55, 92, 165), (205, 195, 85), (215, 215, 212)),
    'sign_border': ((215, 215, 212), (190, 55, 50)), 'sign_back': ((130, 132, 130),),
    'vegetation': ((74, 106, 54), (92, 118, 64), (60, 88, 52)), 'trunk': ((72, 62, 52),),
    'skin': ((200, 170, 150), (160, 125, 100), (110, 85, 70)), 'hair': ((40, 35, 32), (95, 75, 55)),
    'clothes': ((38, 38, 42), (70, 70, 80), (112, 102, 92), (150, 150, 155), (60, 62, 98), (122, 52, 52),
                (190, 185, 175)),
    'helmet': ((40, 40, 40), (200, 200, 200)),
    'car_paint': ((160, 160, 166), (40, 40, 46), (202, 202, 206), (70, 80, 100), (102, 100, 100), (132, 34, 34),
                  (118, 108, 92)),
    'truck_paint': ((200, 200, 198), (110, 115, 120), (80, 90, 110)),
    'bus_paint': ((190, 190, 185), (150, 45, 45), (70, 100, 150)),
    'train_paint': ((195, 195, 195), (175, 60, 60), (90, 120, 110)),
    'bike_paint': ((40, 40, 42), (120, 120, 125), (150, 50, 50)),
    'tyre': ((30, 30, 32),), 'glass': ((45, 52, 60), (70, 78, 86)),
    'head_light': ((235, 235, 220),), 'tail_light': ((200, 45, 45),), 'plate': ((215, 215, 210),),
    'display': ((230, 150, 40),), 'static': ((80, 82, 85), (120, 115, 105)), 'ego': ((25, 25, 28),),
}

# material -> (texture kind, strength). Source: bold bricks, leaves, large tiles; target: finer, other patterns.
GTA5_TEXTURES = {
    'road': ('noise', 0.12), 'sidewalk': ('tiles', 0.35), 'terrain': ('blotch', 0.3), 'ground': ('noise', 0.2),
    'building': ('bricks', 0.22), 'wall': ('bricks', 0.3), 'fence': ('mesh', 0.5), 'vegetation': ('leaves', 0.35),
    'trunk': ('vstripes', 0.2), 'cloud': ('blotch', 0.1), 'glass': ('hstripes', 0.15), 'parking': ('noise', 0.1),
}
CITYSCAPES_TEXTURES = {
    'road': ('blotch', 0.18), 'sidewalk': ('tiles', 0.2), 'terrain': ('noise', 0.35), 'ground': ('blotch', 0.2),
    'building': ('vstripes', 0.12), 'wall': ('blotch', 0.25), 'fence': ('vstripes', 0.4), 'vegetation': ('noise', 0.4),
    'trunk': ('noise', 0.2), 'sky': ('blotch', 0.06), 'car_paint': ('blotch', 0.06), 'clothes': ('noise', 0.15),
    'glass': ('blotch', 0.1), 'parking': ('blotch', 0.1),
}


def blend_palettes(a: Mapping[str, tuple[RGB, ...]], b: Mapping[str, tuple[RGB, ...]],
                   t: float) -> dict[str, tuple[RGB, ...]]:
  """Palette b moved back towards palette a: each colour of b becomes (1 - t) * a[i mod len(a)] + t * b[i].

  t = 1 is b itself; smaller t shrinks the colour shift between the domains (the strength of the domain gap).
  """
  out = {}
  for material, colors in b.items():
    src = a.get(material, colors)
    out[material] = tuple(tuple(int(round((1 - t) * s + t * c)) for s, c in zip(src[i % len(src)], color))
                          for i, color in enumerate(colors))
  return out


# How far the target's colours move from the source's (1 = CITYSCAPES_PALETTE as written). With the target's light and
# sensor settings below it is calibrated so that BiSeNet trained on the source loses more than 15 mIoU points on the
# target against the oracle while staying far above chance (benchmarks/RESULTS.md, "Domain gap"): the full shift
# and stronger sensor effects left the source-only model near 5-7 mIoU.
TARGET_PALETTE_SHIFT = 0.25

_GTA5_COUNTS = dict(car=3.5, parked_car=2.0, truck=0.9, bus=0.6, train=0.3, person=3.0, bicycle_rider=0.6,
                    motorcycle_rider=0.8, bicycle=0.4, motorcycle=0.5, tree=3.0, sign=1.0, static=1.0, cloud=4.0)
_CITYSCAPES_COUNTS = dict(car=2.5, parked_car=4.0, truck=0.4, bus=0.35, train=0.25, person=6.0, bicycle_rider=1.0,
                          motorcycle_rider=0.35, bicycle=1.2, motorcycle=0.3, tree=6.0, sign=2.5, static=2.0, cloud=1.0)

GTA5 = Style(
    name='gta5', palette=GTA5_PALETTE, textures=GTA5_TEXTURES, color_jitter=16.0, brightness_jitter=0.14,
    light_gradient=0.04, saturation=1.25, contrast=1.1, gamma=0.95, tint=(1.03, 1.0, 0.97),
    horizon=(0.33, 0.52), focal=(0.75, 0.95), road_width=(6.0, 16.0), building_height=(6.0, 35.0),
    counts=_GTA5_COUNTS, pole_spacing=(20.0, 50.0), crosswalk=0.3, parking=0.4)

CITYSCAPES = Style(
    name='cityscapes', palette=blend_palettes(GTA5_PALETTE, CITYSCAPES_PALETTE, TARGET_PALETTE_SHIFT),
    textures=CITYSCAPES_TEXTURES, color_jitter=12.0,
    brightness_jitter=0.15, texture_scale=0.6, tile_size=0.35, light_gradient=0.15, shadow_prob=0.3,
    saturation=0.8, contrast=0.9, gamma=1.1, tint=(0.97, 1.0, 1.04), blur=0.3, vignetting=0.15, noise=1.5,
    horizon=(0.40, 0.50), focal=(0.95, 1.15), object_scale=1.1, road_width=(5.0, 12.0), sidewalk_width=(2.5, 5.0),
    building_height=(8.0, 25.0), side_probs=dict(building=0.5, vegetation=0.25, wall=0.1, fence=0.1, gap=0.05),
    counts=_CITYSCAPES_COUNTS, pole_spacing=(10.0, 30.0), crosswalk=0.2, parking=0.7, ego_vehicle=True)

# The Cityscapes streets at night (same layout statistics): low light under a dark sky, street lamps, lit windows and
# vehicle lights as bright spots with halos, a blue cast, low contrast, stronger sensor noise and blur.
NIGHT = dataclasses.replace(
    CITYSCAPES, name='night',
    palette={**CITYSCAPES.palette, 'sky': ((16, 20, 38), (24, 28, 50), (10, 13, 28)), 'cloud': ((40, 42, 56),),
             'lamp': ((255, 225, 160),)},
    light_level=0.3, emissive_gain=1.6, lamps_lit=True, lit_windows=0.3, glow=0.7, glow_radius=4.0,
    tint=(0.85, 0.9, 1.2), saturation=0.6, contrast=0.75, gamma=1.2, light_gradient=0.5, shadow_prob=0.0, blur=0.5,
    noise=9.0)

# SYNTHIA-RAND-like source: a rendered city of its own palette (pastel facades, light concrete, yellow-green trees)
# and textures, seen from higher cameras pitched down (a high horizon, a wide lens), crowded with pedestrians, and
# none of the classes SYNTHIA lacks (terrain, truck, train).
SYNTHIA_PALETTE: dict[str, tuple[RGB, ...]] = {
    **GTA5_PALETTE,
    'sky': ((170, 200, 230), (150, 185, 225), (200, 215, 235)),
    'road': ((105, 102, 98), (120, 116, 110), (92, 90, 88)),
    'sidewalk': ((165, 160, 150), (150, 140, 125), (180, 172, 160)),
    'curb': ((190, 188, 180),), 'ground': ((140, 128, 108), (120, 112, 100)),
    'building': ((220, 200, 170), (200, 170, 150), (175, 185, 195), (230, 220, 200), (160, 150, 140), (205, 180, 120)),
    'window': ((70, 90, 110), (110, 130, 150)), 'wall': ((185, 180, 170), (160, 150, 135)),
    'fence': ((120, 120, 115), (90, 80, 70)), 'pole': ((100, 100, 95), (150, 150, 145)),
    'vegetation': ((110, 150, 50), (130, 165, 60), (90, 130, 45)), 'trunk': ((95, 80, 60),),
    'clothes': ((180, 60, 60), (60, 80, 140), (50, 50, 55), (200, 200, 195), (150, 120, 90), (90, 130, 90)),
    'car_paint': ((175, 40, 40), (40, 70, 150), (210, 210, 210), (45, 45, 50), (200, 180, 60), (120, 125, 130)),
}
SYNTHIA_TEXTURES = {
    'road': ('noise', 0.22), 'sidewalk': ('tiles', 0.45), 'ground': ('blotch', 0.25), 'building': ('hstripes', 0.18),
    'wall': ('tiles', 0.3), 'fence': ('mesh', 0.4), 'vegetation': ('blotch', 0.45), 'trunk': ('noise', 0.2),
    'glass': ('vstripes', 0.15),
}
SYNTHIA = Style(
    name='synthia', palette=SYNTHIA_PALETTE, textures=SYNTHIA_TEXTURES, color_jitter=14.0, brightness_jitter=0.12,
    texture_scale=0.8, light_gradient=0.08, shadow_prob=0.4, shadow_strength=0.7, saturation=0.9, contrast=1.0,
    horizon=(0.12, 0.35), focal=(0.55, 0.8), camera_height=(2.5, 8.0), road_width=(8.0, 18.0),
    sidewalk_width=(2.5, 6.0), building_height=(8.0, 40.0),
    side_probs=dict(building=0.6, vegetation=0.2, wall=0.1, fence=0.05, gap=0.05),
    counts=dict(_GTA5_COUNTS, truck=0.0, train=0.0, person=8.0, bicycle_rider=0.8, motorcycle_rider=0.5, bus=0.4),
    pole_spacing=(12.0, 35.0), crosswalk=0.5, parking=0.5, terrain=False)

STYLES: dict[str, Style] = {
    'gta5': GTA5,
    'synthia': SYNTHIA,
    'cityscapes': CITYSCAPES,
    # Other target domains: the Cityscapes streets in fog, and at night.
    'fog': dataclasses.replace(CITYSCAPES, name='fog', fog_visibility=45.0, fog_color=(205, 208, 212), contrast=0.9,
                               saturation=0.55, light_gradient=0.1, shadow_prob=0.0, noise=3.0),
    'night': NIGHT,
}

# ---- candidate target styles of the benchmark redesign (issue 13, being measured: benchmarks/RESULTS.md) ----
_PROBE_TEX = dict(CITYSCAPES_TEXTURES, road=('blotch', 0.35), sidewalk=('bricks', 0.35), building=('hstripes', 0.3),
                  vegetation=('blotch', 0.5), terrain=('leaves', 0.4), wall=('vstripes', 0.3), car_paint=('noise', 0.2),
                  sky=('blotch', 0.15))
STYLES['p_shift50'] = dataclasses.replace(CITYSCAPES, name='p_shift50',
                                         palette=blend_palettes(GTA5_PALETTE, CITYSCAPES_PALETTE, 0.5))
STYLES['p_tex'] = dataclasses.replace(CITYSCAPES, name='p_tex', textures=_PROBE_TEX)
STYLES['p_shift50_tex'] = dataclasses.replace(STYLES['p_shift50'], name='p_shift50_tex', textures=_PROBE_TEX)


def get_style(style: Style | str) -> Style:
  if isinstance(style, Style):
    return style
  if style not in STYLES:
    raise ValueError(f'Unknown synthetic style {style!r}; choose one of {sorted(STYLES)} '
                     '(config field data.synthetic.target_style).')
  return STYLES[style]
