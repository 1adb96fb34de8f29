#!/usr/bin/env bash
# The benchmarks of issue 15, in order, raw outputs under benchmarks/results/ (run under cpuslot --all:
# Ray starts several processes, and the timings are ratios measured in the same run).
#   cpuslot --all env PYTHONPATH=$PWD bash benchmarks/run_scale.sh
set -uo pipefail  # one benchmark failing does not stop the others
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
out=benchmarks/results
date -u | tee "$out/scale-date.txt"
"$PY" -c "
import time, torch
a = torch.randn(1024, 1024)
for n in (1, 2):
    torch.set_num_threads(n); t = time.perf_counter()
    for _ in range(20): a @ a
    print(f'{n} thread(s): {time.perf_counter() - t:.2f}s')" | tee "$out/scale-threads.txt"
# ROUNDS / W1_ROUNDS: W7 is 20 rounds and W1 30; fewer keep the per-round figures and the ratios
# measurable when machine time is short (RESULTS.md says which were run).
# inline: one process, THREADS torch threads (1 when run in one cpuslot slot); Ray: 2 actors of 1 CPU and 1 thread
for backend in inline ray; do
  threads=1; [ "$backend" = inline ] && threads="${THREADS:-1}"
  rm -f "$out/w7-scale-$backend.jsonl"
  "$PY" benchmarks/bench_w7_scale.py --backends "$backend" --threads "$threads" --reps 3 --rounds "${ROUNDS:-20}" \
    --out "$out/w7-scale-$backend.jsonl" | tee "$out/w7-scale-$backend.txt"
done
"$PY" benchmarks/bench_big_model.py --gb 2.5 --parties 10 --reps 3 | tee "$out/big-model.txt"
"$PY" benchmarks/bench_ray_w1.py --reps 3 --rounds "${W1_ROUNDS:-30}" | tee "$out/ray-w1.txt"
