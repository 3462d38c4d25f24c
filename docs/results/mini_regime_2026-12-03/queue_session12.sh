#!/bin/bash
# Session 12 (Intel Xeon with AVX512-BF16; the defaults now train 9000 steps with AMP = bfloat16).
# Seed 0 is the fresh clone's `make mini` (/tmp/fc). Here: its teacher's continuation (50% more
# steps, resumed from the 9000-step checkpoint: the cosine schedule is stretched to 13500), then
# seed 1's teacher and its continuation. Each job skips when its final metrics exist.
export OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
R=/work/runs/s12
mkdir -p $R
log() { echo "$(date +%T) $*" >> $R/queue.log; }
teacher() { # seed
  out=$R/teacher9000_s$1
  [ -f $out/final_metrics.json ] && return
  log "start teacher9000_s$1"
  $PY tools/train_net.py --config configs/mini/retinanet_R18_FPN_S1_supervised.yaml --num-gpus 2 \
    --resume OUTPUT_DIR $out SEED $1 > $R/teacher9000_s$1.log 2>&1
  log "end teacher9000_s$1 rc=$? $(grep -o 'copypaste: [0-9.,]*' $R/teacher9000_s$1.log | tail -1)"
}
cont() { # seed, folder of its 9000-step teacher
  out=$R/cont13500_s$1
  [ -f $out/final_metrics.json ] && return
  if [ ! -d $out ]; then
    mkdir -p $out
    cp $2/model_final.pth $out/
    echo -n model_final.pth > $out/last_checkpoint
  fi
  log "start cont13500_s$1"
  $PY tools/train_net.py --config configs/mini/retinanet_R18_FPN_S1_supervised.yaml --num-gpus 2 \
    --resume OUTPUT_DIR $out SOLVER.MAX_ITER 13500 SEED $1 > $R/cont13500_s$1.log 2>&1
  log "end cont13500_s$1 rc=$? $(grep -o 'copypaste: [0-9.,]*' $R/cont13500_s$1.log | tail -1)"
}
case "$1" in
  cont0) cont 0 /tmp/fc/output/mini/retinanet_R18_FPN_S1_self_train/teacher ;;
  seed1) teacher 1; cont 1 $R/teacher9000_s1 ;;
  # Seed 1 ran as the whole experiment: OMP_NUM_THREADS=1 tools/self_train.py --config
  # configs/mini/retinanet_R18_FPN_S1_self_train.yaml --num-gpus 2 OUTPUT_DIR $R/st9000_s1 SEED 1
  cont1) cont 1 $R/st9000_s1/teacher ;;
esac
log "queue $1 done"
