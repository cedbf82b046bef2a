#!/usr/bin/env bash
# The GPU check of BENCHMARKS.md ("Feeding the GPU"): what a lent H100/H200 measured.
#
#   OUT=/tmp/gpu-check bash scripts/gpu_check.sh        (from the repo root)
#
# Sized for one 10-minute call of the device tool; $OUT collects the logs (8 files).
# The lent image lacks simplejpeg: carry it as a wheel in .whl/ (the device tool's
# README). DEVICE=cpu SIZE=64 DISTINCT=16 TRAIN=300 TEST=64 LAB_TRAIN=400 LAB_TEST=80
# EPOCHS=2 LAB_EPOCHS=2 SECONDS_PER_SIDE=1 dry-runs it on a CPU in about two minutes.
#
# Data: DISTINCT synthetic 512 px JPEGs (quality 95, as the course's), listed under
# distinct names (hard links) as the course's 28,100 training and 7,026 test images
# ("lab"), and as 8,192 and 2,048 ("small"); every epoch decodes every listed file.
# Runs, in this order:
#   retinopathy bench, ResNet18 batch 256: the feed (streaming / bytes + nvJPEG / resident)
#       and eager against compiled steps;
#   retinopathy train, ResNet18 batch 256 on the lab-size split for the lab's 10 epochs,
#       resident and compiled (the lab's protocol, one arm, end to end);
#   retinopathy train, ResNet18 batch 256 on the small split, streaming and eager (what
#       training did before resident data and compile);
#   retinopathy bench, ResNet50 batch 128: eager against compiled;
#   retinopathy train, ResNet50 batch 128 on the small split, resident and compiled;
#   retinopathy train, ResNet18 on the small split, 2 epochs, with Inductor's cache emptied
#       and then kept, under TORCH_LOGS=recompiles (the first epoch's start-up).
# STEPS="bench lab streaming resnet50 startup" (the default) picks which to run.
set -euo pipefail
OUT=${OUT:-/tmp/gpu-check}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-512}
SECONDS_PER_SIDE=${SECONDS_PER_SIDE:-4}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 RETINOPATHY_NO_DOWNLOAD=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
python3 -c "import os, torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
    'cores', len(os.sched_getaffinity(0)))" | tee -a "$OUT/gpu.txt"

DATA=/tmp/gpu-check-data
images() {  # images NAME TRAIN TEST
  if [ ! -f "$DATA/$1/test_img.csv" ]; then
    python3 scripts/gpu_data.py "$DATA/$1" "${DISTINCT:-128}" "$2" "$3"
  fi
}

project() {  # project NAME DATA MODEL BATCH ON_DEVICE COMPILE EPOCHS
  local dir="$DATA/runs/$1"
  rm -rf "$dir" && mkdir -p "$dir"
  python3 - "$dir/params.yaml" "$DATA/$2" "$3" "$4" "$5" "$6" "$7" "$SIZE" "$DEVICE" <<'PY'
import sys, yaml
path, root, model, batch, on_device, compile_, epochs, size, device = sys.argv[1:]
params = yaml.safe_load(open("params.yaml"))
params["model"] = model
params["data"].update(root=root, image_size=int(size), on_device=on_device)
params["train"].update(batch_size=int(batch), compile=compile_, epochs=int(epochs), precise_bn_images=0,
                       lr=0.001, device=device)
yaml.safe_dump(params, open(path, "w"), sort_keys=False)
PY
  (cd "$dir" && python3 -m retinopathy prepare --workers 16 > /dev/null && python3 -m retinopathy weights > /dev/null 2>&1)
  local started=$SECONDS
  (cd "$dir" && python3 -m retinopathy train --init scratch) > "$OUT/train-$1.txt" 2>&1 \
    || echo "$1: train failed with exit status $?" >> "$OUT/train-$1.txt"
  echo "$1: $((SECONDS - started)) s in all (decoding, any compile, the epochs)" >> "$OUT/train-$1.txt"
  grep -E "epoch [0-9]|decoded | s in all" "$OUT/train-$1.txt" || true
}

bench() {  # bench MODEL BATCH SECTION...
  local model=$1 batch=$2; shift 2
  python3 -m retinopathy bench --device "$DEVICE" "${@/#/--only=}" --size "$SIZE" --batch "$batch" \
    --models "$model" --seconds "$SECONDS_PER_SIDE" --rounds 3 --json "$OUT/bench-$model.json" \
    > "$OUT/bench-$model.txt" 2>&1 || echo "bench $model failed with exit status $?" | tee -a "$OUT/bench-$model.txt"
  grep -vE "^bench:" "$OUT/bench-$model.txt" | sed -n '/^comparison/,$p'
}

# Most telling first: a call stopped at its limit still returns the logs written so far.
STEPS=${STEPS:-bench lab streaming resnet50 startup}
want() { [[ " $STEPS " == *" $1 "* ]]; }
images small "${TRAIN:-8192}" "${TEST:-2048}"
if want bench; then bench resnet18 256 feed compile; fi
if want lab; then
  images lab "${LAB_TRAIN:-28100}" "${LAB_TEST:-7026}"
  project r18-lab-resident-compiled lab resnet18 256 on on "${LAB_EPOCHS:-10}"
fi
if want streaming; then project r18-streaming-eager small resnet18 256 off off "${EPOCHS:-3}"; fi
if want resnet50; then
  bench resnet50 128 compile
  project r50-resident-compiled small resnet50 128 on on "${EPOCHS:-3}"
fi
if want startup; then  # the first epoch with Inductor's cache empty, then kept (as for a second arm)
  rm -rf "$HOME/.cache/retinopathy/inductor"
  export TORCH_LOGS=recompiles
  project r18-cache-cold small resnet18 256 on on 2
  project r18-cache-kept small resnet18 256 on on 2
  grep -ci "recompil" "$OUT"/train-r18-cache-*.txt || true
  unset TORCH_LOGS
fi
echo "done: $OUT"
