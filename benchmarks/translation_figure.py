"""Original source images beside their translations, one image per row, one folder per column, as one PNG (the
README's translation pictures).

  python benchmarks/translation_figure.py --out docs/translate/table.png --n 3 \\
      data/synthetic/gta5/images runs/table_v2/translator_s0/translated_gta5/images \\
      runs/table_night/translator_s0/translated_gta5/images --titles original "to day" "to night"

The first folder's first `--n` images (sorted by name, or `--names`) are looked up by the same relative path in
every other folder (`--mode=translate` keeps the source's file names); a name missing from a folder is an error
naming both. Every picture is resized to `--height` pixels high (bilinear), keeping its aspect ratio.
"""

from __future__ import annotations

import argparse
import os
import sys

from PIL import Image, ImageDraw, ImageFont

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
TITLE_HEIGHT = 20
TITLE_SIZE = 15  # Pillow's built-in font at this size (10 px, its default, is hard to read beside 128-px images)
GAP = 2


def image_names(folder: str) -> list[str]:
  names = sorted(os.path.relpath(os.path.join(root, f), folder) for root, _, fs in os.walk(folder)
                 for f in fs if f.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    sys.exit(f'{folder!r} holds no image ({", ".join(IMAGE_EXTENSIONS)}).')
  return names


def figure(folders: list[str], names: list[str], height: int, titles: list[str]) -> Image.Image:
  """Rows: `names`; columns: `folders`; each cell resized to `height`; a title strip on top when `titles`."""
  rows = []
  for name in names:
    cells = []
    for folder in folders:
      path = os.path.join(folder, name)
      if not os.path.exists(path):
        sys.exit(f'{path!r} does not exist: {name!r} is in {folders[0]!r} but not in {folder!r}.')
      with Image.open(path) as image:
        image = image.convert('RGB')
        width = max(1, round(image.width * height / image.height))
        cells.append(image.resize((width, height), Image.BILINEAR))
    rows.append(cells)
  widths = [max(row[c].width for row in rows) for c in range(len(folders))]
  top = TITLE_HEIGHT if titles else 0
  canvas = Image.new('RGB', (sum(widths) + GAP * (len(widths) - 1), top + len(rows) * (height + GAP) - GAP),
                     (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  try:
    font = ImageFont.load_default(size=TITLE_SIZE)  # Pillow >= 10.1 with FreeType
  except (TypeError, ImportError):
    font = ImageFont.load_default()
  for c, title in enumerate(titles):
    draw.text((sum(widths[:c]) + GAP * c + 3, 1), title, fill=(0, 0, 0), font=font)
  for r, row in enumerate(rows):
    for c, cell in enumerate(row):
      canvas.paste(cell, (sum(widths[:c]) + GAP * c, top + r * (height + GAP)))
  return canvas


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('folders', nargs='+', help='the originals first, then one folder per translation')
  parser.add_argument('--out', required=True, help='PNG to write')
  parser.add_argument('--n', type=int, default=3, help='images (rows)')
  parser.add_argument('--names', nargs='*', default=None, help='relative paths in the first folder (default: the first n)')
  parser.add_argument('--height', type=int, default=128, help='pixels per row')
  parser.add_argument('--titles', nargs='*', default=[], help='one title per folder')
  args = parser.parse_args()
  if args.titles and len(args.titles) != len(args.folders):
    sys.exit(f'--titles has {len(args.titles)} titles for {len(args.folders)} folders.')
  names = args.names or image_names(args.folders[0])[:args.n]
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  figure(args.folders, names, args.height, args.titles).save(args.out)
  print(f'wrote {args.out}: {len(names)} images x {len(args.folders)} columns')


if __name__ == '__main__':
  main()
