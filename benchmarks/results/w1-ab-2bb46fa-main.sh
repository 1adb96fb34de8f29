#!/usr/bin/env bash
# Pollen's W1 (30 rounds) at 2bb46fa (rounds ratio 1.014 at 16:00) against main, alternating.
for i in 1 2; do
  for tree in /tmp/wt-old /work/main; do
    [ $i = 2 ] && tree=$([ $tree = /tmp/wt-old ] && echo /work/main || echo /tmp/wt-old)
    r=$(cd $tree && PYTHONPATH=$tree /work/main/.venv/bin/python benchmarks/bench_w1_overhead.py --child pollen --partition iid --rounds 30 | grep RESULT)
    echo "$i $tree $(echo "$r" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()[7:]); print("job %.1f rounds %.1f cpu %.1f rss %.0f" % (d["job_s"], d["rounds_s"], d["cpu_s"], d["peak_rss_mb"]))')"
  done
done
