#!/bin/bash
# Session 15 (2026-12-04, Intel Xeon with AVX512-BF16), each job alone on the 2 cores.
# A smaller labeled set: 10% of mini-COCO train (150 scenes, subset seed 0) instead of 20%, with
# 6000 steps instead of 9000 (320 epochs of the labeled set instead of 240): the main job
# (teacher, labeling, paper-faithful student), then the teacher's continuation to 9000 steps
# (+50%), the convergence criterion. Seeds are given on the command line: queue_session15.sh 0 1 2
# Each job skips when its final metrics exist, so the queue can be restarted.
export OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
R=/work/runs/s13
log() { echo "$(date +%T) $*" >> $R/queue.log; }
REGIME="SSDET.DATA.LABELED_FRACTION 0.1 SOLVER.MAX_ITER 6000"
selftrain() { # name, seed, extra options...
  out=$R/$1
  [ -f $out/round1/student/final_metrics.json ] && return
  log "start $1"
  $PY tools/self_train.py --config configs/mini/retinanet_R18_FPN_S1_self_train.yaml --num-gpus 2 \
    OUTPUT_DIR $out SEED $2 $REGIME "${@:3}" > $R/$1.log 2>&1
  log "end $1 rc=$? $(grep -o 'student - teacher.*' $R/$1.log | tail -1)"
}
cont() { # name, folder of its teacher, seed, steps, extra options...
  out=$R/$1
  [ -f $out/final_metrics.json ] && return
  if [ ! -d $out ]; then
    mkdir -p $out
    cp $2/model_final.pth $out/
    echo -n model_final.pth > $out/last_checkpoint
  fi
  log "start $1"
  $PY tools/train_net.py --config configs/mini/retinanet_R18_FPN_S1_supervised.yaml --num-gpus 2 \
    --resume OUTPUT_DIR $out SEED $3 $REGIME SOLVER.MAX_ITER $4 "${@:5}" > $R/$1.log 2>&1
  log "end $1 rc=$? $(grep -o 'copypaste: [0-9.,]*' $R/$1.log | tail -1)"
}
for s in "$@"; do
  selftrain st6000_f10_s$s $s
  cont cont9000_f10_s$s $R/st6000_f10_s$s/teacher $s 9000
done
log "queue 15 done ($*)"
