#!/bin/bash
# Session 17, after queue_session17.sh (before queue_session17b.sh), alone on the 2 cores: SimCLR on mini-ImageNet for as long
# as its target allows (15 min alone), with the two changes that helped in session 16's short
# trials (crops (0.5, 1.0): 17.8% vs 14.5%; blur 0.5), as 2 one-thread processes (negatives
# gathered across them), checkpoints every 400 iterations, each then probed
# (the linear probe of tools/pretrain.py on the checkpoint), to see whether the probe still rises.
export OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
R=/work/runs/s17
cd /work/main
log() { echo "$(date +%T) $*" >> $R/queue.log; }
while pgrep -f queue_session17.sh > /dev/null; do sleep 20; done
out=$R/simclr_crop05_blur05
if [ ! -f $out/pretrain_metrics.json ]; then
  log "start simclr_crop05_blur05"
  timeout 1500 $PY tools/pretrain.py --config configs/pretrain/mini_simclr.yaml --num-gpus 2 \
    --resume OUTPUT_DIR $out DATALOADER.NUM_WORKERS 0 SSDET.PRETRAIN.CROP_SCALE "(0.5, 1.0)" \
    SSDET.PRETRAIN.SIMCLR.BLUR_PROB 0.5 SOLVER.MAX_ITER 2000 SOLVER.WARMUP_ITERS 100 \
    SOLVER.CHECKPOINT_PERIOD 400 > $R/simclr_crop05_blur05.log 2>&1
  log "end simclr_crop05_blur05 rc=$? $(grep -o 'top-1 [0-9.]*' $R/simclr_crop05_blur05.log | tail -1)"
  log "start probes"
  $PY docs/results/mini_regime_2026-12-04/probe_checkpoints.py $out > $R/simclr_probes.log 2>&1
  log "end probes rc=$?"
fi
log "queue 17c done"
