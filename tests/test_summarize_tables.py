"""benchmarks/summarize_tables.py's FD table over several seeds: each seed's fid.json names its own folders
(runs/table_v2/stage_s1 for seed 1), so the table must not print one seed's folders for every seed."""

from __future__ import annotations

import json
import os

from tests.script_utils import load_benchmark_script


def summarize():
  return load_benchmark_script('summarize_tables')


def write_fd(root, row, seed, fd, a_spec, network, num_a=200):
  os.makedirs(os.path.join(root, f'{row}_s{seed}'))
  record = {'fd': fd, 'network': network, 'a': {'spec': a_spec, 'num_images': num_a},
            'b': {'spec': 'target:val', 'num_images': 200}}
  with open(os.path.join(root, f'{row}_s{seed}', 'fid.json'), 'w') as f:
    json.dump(record, f)


def fd_lines(tmp_path, capsys):
  module = summarize()
  module.print_fd(module.load_fd(str(tmp_path)))
  return [line for line in capsys.readouterr().out.splitlines() if line.startswith('| fd_')]


def test_fd_table_writes_each_seeds_folders_with_the_seed_generalised(tmp_path, capsys):
  for seed, fd in ((0, 63.0), (1, 62.0), (12, 61.0)):
    write_fd(tmp_path, 'fd_translated', seed, fd, f'runs/table_night/translator_s{seed}/translated_gta5/images',
             f'bisenet of runs/table_v2/stage_s{seed} (last step 1000)')
  [line] = fd_lines(tmp_path, capsys)
  cells = [c.strip() for c in line.strip('|').split('|')]
  assert cells[1] == 'runs/table_night/translator_sS/translated_gta5/images'
  assert cells[3] == '3'
  assert cells[4] == '62.00 ± 1.00'
  assert cells[5] == 's0: 63.00, s1: 62.00, s12: 61.00'
  assert cells[7] == 'bisenet of runs/table_v2/stage_sS (last step 1000)'
  assert 'stage_s0' not in line and 'translator_s0' not in line


def test_fd_table_prints_every_seed_where_they_differ_beyond_the_seed(tmp_path, capsys):
  # seed 1 measured another network and fewer images: the row says so instead of showing seed 0's for both
  write_fd(tmp_path, 'fd_source', 0, 128.5, 'source:train', 'bisenet of runs/table_v2/stage_s0 (last step 1000)')
  write_fd(tmp_path, 'fd_source', 1, 135.7, 'source:train', 'bisenet of runs/other/stage_s1 (last step 500)', num_a=100)
  [line] = fd_lines(tmp_path, capsys)
  cells = [c.strip() for c in line.strip('|').split('|')]
  assert cells[1] == 'source:train'
  assert cells[6] == 's0: 200 / 200; s1: 100 / 200'
  assert cells[7] == ('s0: bisenet of runs/table_v2/stage_s0 (last step 1000); '
                      's1: bisenet of runs/other/stage_s1 (last step 500)')
