#!/bin/bash
# Session 14 (2026-12-04, Intel Xeon with AVX512-BF16), after
# ../mini_regime_2026-12-03/queue_session13.sh, each job alone on the 2 cores:
# 1. Time to accuracy (benchmarks/bench_time_to_accuracy.py), before and after the regime change:
#    "before" is the mini teacher as of commit d84a9f0 (all of mini-COCO, 1500 steps, float32, one
#    process with 2 loader workers), "after" today's default (20% labeled, 9000 steps, bfloat16,
#    2 one-thread gloo processes, in-process loading), both on today's mini world.
# 2. ImageNet Init at 9000 steps, seed 0: supervised pre-training on mini-ImageNet, then the main
#    job with ImageNet Init on every stage (teacher = the supervised ImageNet Init control).
# Each job skips when its output exists, so the queue can be restarted.
PY=/work/main/.venv/bin/python
R=/work/runs/s13
log() { echo "$(date +%T) $*" >> $R/queue.log; }
# $R/go14 is made by hand once the test suite has run alone after queue_session13.sh.
until grep -q "queue done" $R/queue.log 2>/dev/null && [ -f $R/go14 ]; do sleep 30; done
TTA=benchmarks/results/time_to_accuracy.json
if ! grep -q '"before"' $TTA 2>/dev/null; then
  log "start tta_before"
  $PY benchmarks/bench_time_to_accuracy.py --label before --eval-period 150 \
    SSDET.DATA.LABELED_FRACTION 1.0 SOLVER.MAX_ITER 1500 SOLVER.CHECKPOINT_PERIOD 500 \
    SOLVER.AMP.ENABLED False DATALOADER.NUM_WORKERS 2 > $R/tta_before.log 2>&1
  log "end tta_before rc=$?"
fi
if ! grep -q '"after"' $TTA 2>/dev/null; then
  log "start tta_after"
  $PY benchmarks/bench_time_to_accuracy.py --label after --eval-period 750 --num-gpus 2 \
    > $R/tta_after.log 2>&1
  log "end tta_after rc=$?"
fi
export OMP_NUM_THREADS=1
if [ ! -f $R/pretrain_sup/backbone_final.pth ]; then
  log "start pretrain_sup"
  $PY tools/pretrain.py --config configs/pretrain/mini_supervised.yaml --resume \
    OUTPUT_DIR $R/pretrain_sup > $R/pretrain_sup.log 2>&1
  log "end pretrain_sup rc=$?"
fi
out=$R/st9000_imagenet_s0
if [ ! -f $out/student/final_metrics.json ]; then
  log "start st9000_imagenet_s0"
  $PY tools/self_train.py --config configs/mini/retinanet_R18_FPN_S1_self_train.yaml --num-gpus 2 \
    OUTPUT_DIR $out SEED 0 SSDET.INIT IMAGENET SSDET.INIT_WEIGHTS $R/pretrain_sup/backbone_final.pth \
    > $R/st9000_imagenet_s0.log 2>&1
  log "end st9000_imagenet_s0 rc=$? $(grep -o 'student - teacher.*' $R/st9000_imagenet_s0.log | tail -1)"
fi
log "queue 14 done"
