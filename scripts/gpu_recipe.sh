#!/usr/bin/env bash
# The GPU recipe of issue 12 (docs/gpu.md): rebuild the dataset from all 14 collections, train the stronger
# base, the reward embedder and the judges' scorer on it, theta_q / theta_d and beta = 5, 10 with 2 seeds
# each, then `reproduce` (claims 3 and 6 with CIs over seeds and prompts).
#
#   make gpu-recipe                      # = bash scripts/gpu_recipe.sh; rerun it to resume after an interruption
#   STAGES="data embedders" make gpu-recipe   # only some stages (here the CPU-only ones, before a GPU session)
#
# Stages (STAGES, default all, in this order): data (corpus build), embedders (reward embedder and judges'
# scorer: CPU only, run beside the base when both are asked for), base, betas (theta_q, theta_d and the other
# beta x seed runs), sweeps (reproduce). A stage whose outputs are up to date costs seconds.
#
# Writes musicgen_cfg/assets/default/{dataset.npz,dataset.json,base,embedder,scorer,quality,diversity} (each
# with the manifest that names its rebuild command) and results/; logs and run directories under runs/gpu/.
# Until it has finished, the assets are a mix of old and new: rerun it to the end, or
# `git checkout musicgen_cfg/assets` to go back. Environment: BIN (default .venv/bin: the bin/ of a Python
# environment with torch for the GPU and this project's dependencies; this checkout's code is used), WORKERS (parsing
# processes, default: all cores), THREADS (torch threads of each GPU process, default 2), CPU_THREADS (of the
# CPU-only embedder and scorer trainings, default 6), RETRAIN_JUDGES (1 = retrain the judges' scorer on the
# new dataset, which it must cover; 0 = keep the shipped one).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORKERS=${WORKERS:-$(nproc)}
THREADS=${THREADS:-2}
CPU_THREADS=${CPU_THREADS:-6}
RETRAIN_JUDGES=${RETRAIN_JUDGES:-1}
STAGES=${STAGES:-data embedders base betas sweeps}
want() { [[ " $STAGES " == *" $1 "* ]]; }
for stage in $STAGES; do
  case $stage in data|embedders|base|betas|sweeps) ;; *) echo "unknown stage '$stage' (data embedders base betas sweeps)"; exit 2;; esac
done
ASSETS=musicgen_cfg/assets/default
LOGS=runs/gpu
mkdir -p "$LOGS"
export OMP_NUM_THREADS=$THREADS
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, installed or not
mg() { "$BIN/python" -m musicgen_cfg.cli "$@"; }
# logged NAME COMMAND...: run it with its output in runs/gpu/NAME.log; on failure show the log's end and stop.
logged() {
  local name=$1; shift
  "$@" > "$LOGS/$name.log" 2>&1 || { echo "failed: $* (runs/gpu/$name.log):"; tail -20 "$LOGS/$name.log"; exit 1; }
}
say() { echo "[$(date -u +%H:%M:%S)] $*"; }
# resume_flag RUN_DIR: --resume once the run has a checkpoint (train/pretrain refuse --resume without one).
resume_flag() { compgen -G "$1/checkpoint-*" > /dev/null && echo --resume || true; }
# A dataset-derived artifact is up to date when its manifest records the current dataset's sha256.
trained_on_dataset() {
  "$BIN/python" - "$1" <<'PY'
import hashlib, json, pathlib, sys
manifest = pathlib.Path(sys.argv[1]) / "manifest.json"
dataset = hashlib.sha256(pathlib.Path("musicgen_cfg/assets/default/dataset.npz").read_bytes()).hexdigest()
data = json.loads(manifest.read_text()) if manifest.is_file() else {}
sys.exit(0 if dataset in (data.get("dataset_sha256"), data.get("data", {}).get("dataset_sha256")) else 1)
PY
}
started=$SECONDS

# The dataset is up to date when dataset.json is the full default build and its sha256 is the file's.
dataset_current() {
  "$BIN/python" - <<'PY'
import hashlib, json, pathlib, sys
path = pathlib.Path("musicgen_cfg/assets/default/dataset.npz")
manifest = json.loads(path.with_suffix(".json").read_text())
sys.exit(0 if manifest["command"] == "musicgen-cfg corpus build --rebuild-shipped"
         and manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() else 1)
PY
}
if want data && ! dataset_current; then
  say "data: all 14 collections ($WORKERS parsing processes; parsed pieces cached in .cache/corpus)"
  logged corpus mg corpus build --workers "$WORKERS" --rebuild-shipped
fi
grep -q '"command": "musicgen-cfg corpus build --rebuild-shipped"' "$ASSETS/dataset.json" \
  || { echo "$ASSETS/dataset.json is not the full 14-collection build: run the data stage"; exit 1; }

pids=()
if want embedders && ! trained_on_dataset "$ASSETS/embedder"; then
  say "embedders: the reward embedder on the new dataset (CPU)"
  logged embedder mg embedder train --model default --out "$ASSETS/embedder" --kind notes --steps 1500 --batch-size 8 \
    --chunk-seconds 2.0 --lr 0.003 --weight-decay 0.0001 --warmup-steps 50 --heldout 128 --clips 1500 --clip-seconds 4.0 \
    --eval-every 250 --seed 0 --threads "$CPU_THREADS" --rebuild-shipped &
  pids+=($!)
fi
if want embedders && [ "$RETRAIN_JUDGES" = 1 ] && ! trained_on_dataset "$ASSETS/scorer"; then
  say "embedders: the judges' scorer on the new dataset (CPU)"
  logged scorer mg judges train-scorer --out "$ASSETS/scorer" --steps 1000 --batch-size 128 --pairs 8000 --transpose 6 --lr 0.002 \
    --weight-decay 0.01 --warmup-steps 50 --eval-every 200 --seed 0 --threads "$CPU_THREADS" --rebuild-shipped &
  pids+=($!)
fi
if want base; then
  say "base: configs/gpu/base.yaml"
  logged base mg pretrain --config configs/gpu/base.yaml --export "$ASSETS/base" --rebuild-shipped true $(resume_flag runs/gpu/base)
  say "   val_loss by step: $(awk -F, 'NR==1{for(i=1;i<=NF;i++)if($i=="val_loss")c=i} NR>1&&c&&$c!=""{printf "%s:%s ",$1,$c}' runs/gpu/base/metrics.csv)"
fi
for pid in ${pids[@]+"${pids[@]}"}; do wait "$pid"; done

if want betas; then
  say "betas: theta_q, theta_d (seed 0, shipped) and the 6 other beta x seed runs, in parallel"
  logged quality mg train --config configs/gpu/quality.yaml --export "$ASSETS/quality" --rebuild-shipped true \
    $(resume_flag runs/gpu/quality) & q=$!
  logged diversity mg train --config configs/gpu/diversity.yaml --export "$ASSETS/diversity" --rebuild-shipped true \
    $(resume_flag runs/gpu/diversity) & d=$!
  logged betas mg reproduce --config configs/gpu/reproduce.yaml --sweeps false
  wait "$q"; wait "$d"
fi

if want sweeps; then
  say "sweeps: reproduce, evaluation, tables, claims (results/)"
  logged reproduce mg reproduce --config configs/gpu/reproduce.yaml
  grep -E "^claim|results in" "$LOGS/reproduce.log"
fi

say "shipped binaries (budget 80 MB)"
total=$(du -cb "$ASSETS"/*/model.safetensors "$ASSETS/dataset.npz" | tail -1 | cut -f1)
say "   $((total / 1000000)) MB; the whole recipe took $((SECONDS - started)) s"
test "$total" -le 80000000
