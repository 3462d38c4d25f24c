#!/bin/bash
# Side by side, alone: the mini teacher's step time before (41d1f74) and after (exact resume).
export OMP_NUM_THREADS=1
for rep in 1 2; do
  for side in before after; do
    dir=/work/wt-before; [ $side = after ] && dir=/work/main
    cd $dir
    rm -rf /tmp/speed_$side
    PYTHONPATH=$dir /work/main/.venv/bin/python tools/train_net.py --config configs/mini/retinanet_R18_FPN_S1_supervised.yaml --num-gpus 2 OUTPUT_DIR /tmp/speed_$side SOLVER.MAX_ITER 150 TEST.EVAL_PERIOD 0 DATASETS.TEST "()" 2>&1 | grep "Overall training speed" | sed "s/^/$side rep=$rep /"
  done
done
