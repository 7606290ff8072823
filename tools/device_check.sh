#!/usr/bin/env bash
# The GPU check in one call (docs/deployment.md, "Checking on a GPU"): on a CUDA machine, from the repo root,
#   bash tools/device_check.sh [OUT_DIR]          # OUT_DIR: $OUT where set, else outputs/device_check
# It runs, each step logged and timed, none stopping the others:
#   1. the machine: nvidia-smi, python, torch/CUDA, the packages the project imports;
#   2. the `gpu` tests (pytest -m gpu; TensorRT tests skip with their reason where tensorrt is missing);
#   3. a short training run of the embedded default on CUDA under 16-mixed (trainer=gpu) on synthetic scenes,
#      then read back from its TensorBoard events: NaN/inf steps (train/nonfinite_steps, the GradScaler's
#      train/amp_skipped_steps), training pairs/s (train/device/samples_per_sec), the validation AUC;
#   4. the students' speed on the GPU (loftr-kd-bench device=cuda, torch and onnxruntime rows, 640x480) next
#      to ORB on the same machine.
# It writes at most 8 files (what a lent machine sends back): device_check.md (the figures), env.txt,
# gpu_tests.log, train.log, bench.log, bench.md, bench.json, and with KEEP_CHECKPOINT=1 the training run's
# best checkpoint, best-epochNNN.ckpt (last.ckpt if no epoch ended): a training stage run on the GPU comes back.
# Packages a bare CUDA image lacks (kornia, hydra-core, omegaconf, antlr4) travel as wheels in .whl/
# (`make device-wheels` fetches them here); they are installed to /tmp/site first.
# Sizes for a 10-minute call: STEPS (training optimizer steps, default 300), BENCH_ITERS (default 50);
# TRAIN_ARGS adds Hydra overrides to the training run (e.g. "data.height=480 data.width=640").
# ACCELERATOR=cpu runs the same steps on the CPU (a dry run of this script; the numbers mean nothing).
set -uo pipefail

OUT_DIR=${1:-${OUT:-outputs/device_check}}
PY=${PYTHON:-python3}
STEPS=${STEPS:-300}
BENCH_ITERS=${BENCH_ITERS:-50}
ACCELERATOR=${ACCELERATOR:-gpu}
WORK=${WORK:-/tmp/loftr_kd_device_check}
mkdir -p "$OUT_DIR" "$WORK"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
SUMMARY="$OUT_DIR/device_check.md"
export PYTHONUNBUFFERED=1

: >"$WORK/install.log"
if compgen -G ".whl/*.whl" >/dev/null; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl >>"$WORK/install.log" 2>&1; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    echo "carried wheels installed to /tmp/site: $(cd .whl && echo *.whl)" >>"$WORK/install.log"
  else
    echo "carried wheels NOT installed (pip's message above)" >>"$WORK/install.log"
  fi
else
  echo "no carried wheels (.whl/): the machine's own packages only" >>"$WORK/install.log"
fi
# the package from this checkout, installed or not (its console scripts are run as python -m modules)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}

if [ "$ACCELERATOR" = gpu ]; then TRAINER=trainer=gpu; DEVICE=cuda; else TRAINER=trainer=cpu; DEVICE=cpu; fi

step() {  # step NAME LOG COMMAND...: run, log, time; a failure is recorded, not fatal
  local name=$1 log=$2 start rc
  shift 2
  start=$(date +%s)
  "$@" >>"$log" 2>&1
  rc=$?
  echo "| $name | $rc | $(($(date +%s) - start)) s |" >>"$WORK/steps.md"
  return $rc
}

: >"$WORK/steps.md"
{
  date -u
  cat "$WORK/install.log"
  nvidia-smi 2>&1 || echo "nvidia-smi: not found"
  "$PY" - <<'EOF'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.machine())
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs")
for name in ("pytorch_lightning", "kornia", "hydra", "omegaconf", "onnx", "onnxruntime", "cv2", "tensorboard", "tensorrt"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as error:  # noqa: BLE001 - reported, not raised
        print(name, "missing:", type(error).__name__, str(error).splitlines()[0] if str(error) else "")
EOF
} >"$OUT_DIR/env.txt" 2>&1

if [ "$ACCELERATOR" = gpu ]; then
  step "gpu tests (pytest -m gpu)" "$OUT_DIR/gpu_tests.log" "$PY" -m pytest -m gpu -rs -q -p no:cacheprovider tests
else
  echo "ACCELERATOR=cpu: the gpu tests are left out" >"$OUT_DIR/gpu_tests.log"
fi

RUN="$WORK/train"
rm -rf "$RUN"
step "training, $STEPS steps, $ACCELERATOR" "$OUT_DIR/train.log" "$PY" -m loftr_kd.cli.train "$TRAINER" \
  "data.root=$WORK/synthetic" data.generate.allow_other_root=true data.num_workers=4 threads=null \
  "++trainer.max_steps=$STEPS" trainer.max_epochs=100 data.pairs_per_epoch=800 \
  "paths.output_dir=$RUN" "hydra.run.dir=$RUN" ${TRAIN_ARGS:-}

if [ "${KEEP_CHECKPOINT:-0}" = 1 ]; then
  # the best by the run's validation metric; last.ckpt where no validation ran (a run shorter than an epoch)
  kept=$(ls -t "$RUN"/checkpoints/best-*.ckpt 2>/dev/null | head -n 1)
  kept=${kept:-$RUN/checkpoints/last.ckpt}
  cp "$kept" "$OUT_DIR/" || echo "KEEP_CHECKPOINT: no checkpoint in $RUN/checkpoints" >>"$OUT_DIR/train.log"
fi

step "speed (loftr-kd-bench device=$DEVICE)" "$OUT_DIR/bench.log" "$PY" -m loftr_kd.cli.bench "device=$DEVICE" \
  "students=[paper,paper_refine]" "student_checkpoints={}" "backends=[torch,onnxruntime]" "sizes=[[480,640]]" \
  "aspect_sizes=[]" "teachers=[]" "classical=[orb]" "references=[]" "matcher_rows=[]" \
  "iters=$BENCH_ITERS" warmup=10 "out_dir=$WORK/bench" "latest_dir=$WORK/bench_latest" "hydra.run.dir=$WORK/bench_run"
cp "$WORK"/bench/bench.md "$WORK"/bench/bench.json "$OUT_DIR"/ 2>/dev/null

"$PY" - "$RUN" "$WORK/steps.md" "$SUMMARY" "$ACCELERATOR" "$STEPS" <<'EOF'
"""device_check.md: the steps, and the training run's figures read back from its TensorBoard events."""
import statistics, sys
from pathlib import Path

run, steps, summary, accelerator, max_steps = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:]
lines = [f"# Device check ({accelerator})", "", "| step | exit status | time |", "| --- | ---: | ---: |"]
lines += steps.read_text().splitlines()
try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series = {}
    for events in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            series.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))

    def last(tag):
        return series[tag][-1] if series.get(tag) else "not logged"

    speed = series.get("train/device/samples_per_sec", [])
    later = speed[len(speed) // 2 :]  # past the first windows (cuDNN autotuning, warm-up)
    lines += [
        "",
        f"## Training: {max_steps} optimizer steps of the embedded default, trainer={'gpu' if accelerator == 'gpu' else 'cpu'}",
        "",
        f"- NaN/inf loss or gradient steps skipped (train/nonfinite_steps): {last('train/nonfinite_steps')}",
        f"- steps the 16-mixed GradScaler skipped (train/amp_skipped_steps): {last('train/amp_skipped_steps')}",
        f"- training pairs/s, one device (train/device/samples_per_sec, median of the later half of {len(speed)} "
        f"windows): {statistics.median(later):.1f} (range {min(later):.1f}-{max(later):.1f})"
        if later
        else "- training pairs/s: not logged",
        f"- last train/loss: {last('train/loss')}; val/student/auc@5: {last('val/student/auc@5')}",
    ]
except Exception as error:  # noqa: BLE001 - the summary says what could not be read
    lines += ["", f"training figures not read: {type(error).__name__}: {error}"]
summary.write_text("\n".join(lines) + "\n")
print(summary.read_text())
EOF
[ -f "$OUT_DIR/bench.md" ] && cat "$OUT_DIR/bench.md" >>"$SUMMARY"
echo "wrote $SUMMARY"
