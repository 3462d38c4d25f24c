#!/bin/bash
# Session 17 (2026-12-04, the same AMD EPYC machine as session 16), each job alone on the 2 cores,
# in the 10%-labeled, 6000-step regime: ImageNet Init (the mini supervised backbone of session 16,
# configs/pretrain/mini_supervised.yaml, seed 0) on every stage, seeds 1 and 2; its teacher is the
# ImageNet Init supervised control. Each job skips when its final metrics exist (restartable).
export OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
R=/work/runs/s17
cd /work/main
log() { echo "$(date +%T) $*" >> $R/queue.log; }
REGIME="SSDET.DATA.LABELED_FRACTION 0.1 SOLVER.MAX_ITER 6000"
selftrain() { # name, config, seed, extra options...
  out=$R/$1
  [ -f $out/round1/student/final_metrics.json ] && return
  log "start $1"
  $PY tools/self_train.py --config $2 --num-gpus 2 OUTPUT_DIR $out SEED $3 $REGIME "${@:4}" \
    > $R/$1.log 2>&1
  log "end $1 rc=$? $(grep -o 'student - teacher.*' $R/$1.log | tail -1)"
}
S1=configs/mini/retinanet_R18_FPN_S1_self_train.yaml
BB=/work/runs/s16/pretrain_sup/backbone_final.pth
for s in 1 2; do
  selftrain st6000_f10_imagenet_s$s $S1 $s SSDET.INIT IMAGENET SSDET.INIT_WEIGHTS $BB
done
log "queue 17 done"
