#!/bin/bash
# Session 16 (2026-12-04, a new machine: session 15's run folders were lost with its machine, so
# seed 2 and the queue_session15b.sh jobs run again), each job alone on the 2 cores, in the
# 10%-labeled, 6000-step regime:
# 1. seed 2 of the main job and its continuation to 9000 steps (records lost with the machine);
# 2. the fresh-clone check: `git clone` of main, then the README's two commands, timed;
# 3. Augment-S4 on the teacher and both halves of the student's batches (seed 0), and the S4
#    teacher's continuation to 9000 steps;
# 4. ImageNet Init (the mini supervised backbone, configs/pretrain/mini_supervised.yaml) on every
#    stage (seed 0): its teacher is the ImageNet Init supervised control;
# 5. the time-to-accuracy benchmark of today's default teacher (the labeled 10%, 6000 steps),
#    stored beside session 14's "before" and "after" (20%, 9000 steps) as "after_f10".
# (Restarted once at 18:10 in this order: the seed-2 job of the first start ran on, awaited here.)
# Each job skips when its final metrics exist, so the queue can be restarted.
export OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
R=/work/runs/s16
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
S1=configs/mini/retinanet_R18_FPN_S1_self_train.yaml
while pgrep -f "OUTPUT_DIR $R/st6000_f10_s2 " > /dev/null; do sleep 20; done
selftrain st6000_f10_s2 $S1 2
cont cont9000_f10_s2 $R/st6000_f10_s2/teacher 2 9000
# $R/go_clone is made by hand once the README and configs for the new default are committed.
until [ -f $R/go_clone ]; do sleep 30; done
if [ ! -f $R/clone_done ]; then
  unset OMP_NUM_THREADS
  rm -rf $R/clone && git clone -q /work/main $R/clone && cd $R/clone
  log "start clone make test ($(git log --oneline -1))"
  /usr/bin/time -f "%e s" -o $R/clone_test.time make test > $R/clone_test.log 2>&1
  log "end clone make test rc=$? $(cat $R/clone_test.time) $(tail -1 $R/clone_test.log)"
  log "start clone make mini"
  /usr/bin/time -f "%e s" -o $R/clone_mini.time make mini > $R/clone_mini.log 2>&1
  log "end clone make mini rc=$? $(cat $R/clone_mini.time) $(grep -o 'student - teacher.*' $R/clone_mini.log | tail -1)"
  touch $R/clone_done
  cd /work/main
  export OMP_NUM_THREADS=1
fi
selftrain st6000_f10_S4_s0 configs/mini/retinanet_R18_FPN_S4_self_train.yaml 0
cont cont9000_f10_S4_s0 $R/st6000_f10_S4_s0/teacher 0 9000 SSDET.AUGMENT.POLICY S4
if [ ! -f $R/pretrain_sup/backbone_final.pth ]; then
  log "start pretrain_sup"
  $PY tools/pretrain.py --config configs/pretrain/mini_supervised.yaml --resume \
    OUTPUT_DIR $R/pretrain_sup > $R/pretrain_sup.log 2>&1
  log "end pretrain_sup rc=$?"
fi
selftrain st6000_f10_imagenet_s0 $S1 0 SSDET.INIT IMAGENET \
  SSDET.INIT_WEIGHTS $R/pretrain_sup/backbone_final.pth
if ! grep -q '"after_f10"' benchmarks/results/time_to_accuracy.json; then
  unset OMP_NUM_THREADS
  log "start tta_after_f10"
  $PY benchmarks/bench_time_to_accuracy.py --label after_f10 --eval-period 500 --num-gpus 2 \
    SSDET.DATA.LABELED_FRACTION 0.1 SOLVER.MAX_ITER 6000 > $R/tta_after_f10.log 2>&1
  log "end tta_after_f10 rc=$?"
fi
log "queue 16 done"
