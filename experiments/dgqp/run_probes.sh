#!/usr/bin/env bash
# The probes of experiments/dgqp/README.md, one after another (1 thread, nice 10: the cores are shared),
# from the repository root: experiments/dgqp/run_probes.sh [NAME ...] runs the named ones only.
set -euo pipefail
cd "$(dirname "$0")/../.."
P="nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python experiments/dgqp/probe.py"
OLD="--set dgqp_weight_grad=True"  # gflnb's DGQP before the fix: each candidate is tested on it, alone
SGD="--set optimizer=sgd --set lr=0.01 --set base_batch_size=16 --set momentum=0.9 --set weight_decay=0.0001 \
 --set warmup_iters=500 --set warmup_ratio=0.001"  # GFocalV2's recipe: lr 0.01 at 16 images, i.e. 0.005 at 8
declare -A PROBE=(
  [dgqp_weightgrad_s0]="--quality dgqp $OLD"
  [gfl_s0]="--quality qfl --compare dgqp_weightgrad_s0"
  [dgqp_s0]="--quality dgqp --compare dgqp_weightgrad_s0 --compare gfl_s0"
  [a_lr0.1]="--quality dgqp $OLD --intervene dgqp_lr=0.1 --compare dgqp_weightgrad_s0"
  [a_freeze300]="--quality dgqp $OLD --intervene dgqp_freeze=300 --compare dgqp_weightgrad_s0"
  [b_detach_stats]="--quality dgqp $OLD --intervene detach_stats --compare dgqp_weightgrad_s0"
  [c_sgd]="--quality dgqp $OLD $SGD --compare dgqp_weightgrad_s0"
  [d_neg_stop_q]="--quality dgqp $OLD --intervene neg_stop_q --compare dgqp_weightgrad_s0"
)
ORDER=(dgqp_weightgrad_s0 gfl_s0 dgqp_s0 a_lr0.1 a_freeze300 b_detach_stats c_sgd d_neg_stop_q)
for name in "${@:-${ORDER[@]}}"; do
  echo "== $name: ${PROBE[$name]}"
  # shellcheck disable=SC2086
  $P "$name" --iters 600 ${PROBE[$name]}
done
