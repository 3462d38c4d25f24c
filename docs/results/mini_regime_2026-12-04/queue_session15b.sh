#!/bin/bash
# Session 15, after queue_session15.sh 0 1 2 (each job alone on the 2 cores), in its regime (10%
# labeled, 6000 steps), seed 0:
# 1. ImageNet Init (the mini supervised backbone of queue_session14.sh, top-1 53.0%) on every stage:
#    its teacher is the ImageNet Init supervised control.
# 2. Augment-S4 on the teacher and both halves of the student's batches, then the S4 teacher's
#    continuation to 9000 steps.
# Each job skips when its final metrics exist, so the queue can be restarted.
export OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
R=/work/runs/s13
log() { echo "$(date +%T) $*" >> $R/queue.log; }
until grep -q "queue 15 done (1 2)" $R/queue.log; do sleep 20; done
REGIME="SSDET.DATA.LABELED_FRACTION 0.1 SOLVER.MAX_ITER 6000"
selftrain() { # name, config, seed, extra options...
  out=$R/$1
  [ -f $out/round1/student/final_metrics.json ] && return
  log "start $1"
  $PY tools/self_train.py --config $2 --num-gpus 2 OUTPUT_DIR $out SEED $3 $REGIME "${@:4}" \
    > $R/$1.log 2>&1
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
selftrain st6000_f10_imagenet_s0 configs/mini/retinanet_R18_FPN_S1_self_train.yaml 0 \
  SSDET.INIT IMAGENET SSDET.INIT_WEIGHTS $R/pretrain_sup/backbone_final.pth
selftrain st6000_f10_S4_s0 configs/mini/retinanet_R18_FPN_S4_self_train.yaml 0
cont cont9000_f10_S4_s0 $R/st6000_f10_S4_s0/teacher 0 9000 SSDET.AUGMENT.POLICY S4
log "queue 15b done"
