#!/bin/bash
# Session 13 (2026-12-03 evening, Intel Xeon with AVX512-BF16; the 9000-step AMP defaults).
# Run in session 14 (2026-12-04), in this order:
# 1. The main job at Augment-S1, seed 2, then its teacher's continuation (the third seed).
# 2. The main job at Augment-S4 (seed 0), then its teacher's continuation to 13500 steps.
# Each job skips when its final metrics exist, so the queue can be restarted.
export OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
R=/work/runs/s13
mkdir -p $R
log() { echo "$(date +%T) $*" >> $R/queue.log; }
selftrain() { # name, config, seed
  out=$R/$1
  [ -f $out/student/final_metrics.json ] && return
  log "start $1"
  $PY tools/self_train.py --config $2 --num-gpus 2 OUTPUT_DIR $out SEED $3 > $R/$1.log 2>&1
  log "end $1 rc=$? $(grep -o 'student - teacher.*' $R/$1.log | tail -1)"
}
cont() { # name, folder of its 9000-step teacher, seed, extra options...
  out=$R/$1
  [ -f $out/final_metrics.json ] && return
  if [ ! -d $out ]; then
    mkdir -p $out
    cp $2/model_final.pth $out/
    echo -n model_final.pth > $out/last_checkpoint
  fi
  log "start $1"
  $PY tools/train_net.py --config configs/mini/retinanet_R18_FPN_S1_supervised.yaml --num-gpus 2 \
    --resume OUTPUT_DIR $out SOLVER.MAX_ITER 13500 SEED $3 "${@:4}" > $R/$1.log 2>&1
  log "end $1 rc=$? $(grep -o 'copypaste: [0-9.,]*' $R/$1.log | tail -1)"
}
selftrain st9000_s2 configs/mini/retinanet_R18_FPN_S1_self_train.yaml 2
cont cont13500_s2 $R/st9000_s2/teacher 2
selftrain st9000_S4_s0 configs/mini/retinanet_R18_FPN_S4_self_train.yaml 0
cont cont13500_S4_s0 $R/st9000_S4_s0/teacher 0 SSDET.AUGMENT.POLICY S4
log "queue done"
