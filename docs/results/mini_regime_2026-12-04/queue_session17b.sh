#!/bin/bash
# Session 17, after queue_session17.sh (ImageNet Init seeds 1-2) and queue_session17c.sh
# (SimCLR), alone on the 2 cores (reordered before either started: SimCLR first, being short):
# Augment-S4 trained until it converges, as the paper trains every augmentation strength ("we
# allow each model to train until it converges"): the S4 main job (teacher, and the student on
# both halves) at 12000 steps instead of 6000 (seed 0), and the S4 teacher's continuation to
# 18000 steps (+50%), its convergence test. S1's 6000 steps stay the main job's default.
# Each job skips when its final metrics exist (restartable).
export OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
R=/work/runs/s17
cd /work/main
log() { echo "$(date +%T) $*" >> $R/queue.log; }
REGIME="SSDET.DATA.LABELED_FRACTION 0.1 SOLVER.MAX_ITER 12000"
while pgrep -f 'queue_session17(c)?.sh' > /dev/null; do sleep 20; done
out=$R/st12000_f10_S4_s0
if [ ! -f $out/round1/student/final_metrics.json ]; then
  log "start st12000_f10_S4_s0"
  $PY tools/self_train.py --config configs/mini/retinanet_R18_FPN_S4_self_train.yaml --num-gpus 2 \
    OUTPUT_DIR $out SEED 0 $REGIME > $R/st12000_f10_S4_s0.log 2>&1
  log "end st12000_f10_S4_s0 rc=$? $(grep -o 'student - teacher.*' $R/st12000_f10_S4_s0.log | tail -1)"
fi
out=$R/cont18000_f10_S4_s0
if [ ! -f $out/final_metrics.json ]; then
  if [ ! -d $out ]; then
    mkdir -p $out
    cp $R/st12000_f10_S4_s0/teacher/model_final.pth $out/
    echo -n model_final.pth > $out/last_checkpoint
  fi
  log "start cont18000_f10_S4_s0"
  $PY tools/train_net.py --config configs/mini/retinanet_R18_FPN_S1_supervised.yaml --num-gpus 2 \
    --resume OUTPUT_DIR $out SEED 0 $REGIME SOLVER.MAX_ITER 18000 SSDET.AUGMENT.POLICY S4 \
    > $R/cont18000_f10_S4_s0.log 2>&1
  log "end cont18000_f10_S4_s0 rc=$? $(grep -o 'copypaste: [0-9.,]*' $R/cont18000_f10_S4_s0.log | tail -1)"
fi
log "queue 17b done"
