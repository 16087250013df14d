#!/usr/bin/env bash
# The CPU benchmark set: training throughput (A/B/C on banking77 and the council data), tokenization,
# accuracy and the local pipeline. Each section appends rows to bench/results/<section>.csv; then
# BENCHMARKS.md is regenerated from those files. Run it on a quiet machine (nothing else on the cores):
#   bench/run.sh                                         # or: make bench
#   BENCH_SECTIONS="throughput tokenization" bench/run.sh
# Knobs (defaults: 40 minutes on 2 cores: throughput 19, accuracy 10, the demo run 9, tokenization 2):
#   BENCH_SECTIONS          sections to run (throughput tokenization accuracy pipeline)
#   BENCH_TRAIN_STEPS       optimizer steps per throughput run (8)
#   BENCH_REPEATS           runs of each variant, interleaved A B C A B C ... (3)
#   BENCH_TRAIN_ROWS        train rows the throughput runs draw their batches from (steps x batch size: one epoch)
#   BENCH_BANKING77_EPOCHS  epochs of the Banking77 LoRA and full fine-tune (1)
#   BENCH_BANKING77_RUN     take the Banking77 LoRA figures from this finished `kubetune train` output instead
#   BENCH_COUNCIL_RUN       take kubetune's council figures from this finished train or evaluate output
#   BENCH_COUNCIL_STEPS     without BENCH_COUNCIL_RUN: a short council training of this many steps (0: not measured)
#   BENCH_PIPELINE_SUMMARY  report this finished `kubetune run`'s summary.json instead of running the demo
#   BENCH_DATASETS_DIR      where the datasets are (../shared/datasets)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
SECTIONS=${BENCH_SECTIONS:-throughput tokenization accuracy pipeline}
export BENCH_SESSION=${BENCH_SESSION:-$(date -u +%Y%m%dT%H%M%SZ)}
knobs=$(env | grep -E '^BENCH_(SECTIONS|TRAIN_STEPS|REPEATS|TRAIN_ROWS|BANKING77_EPOCHS|BANKING77_RUN|COUNCIL_RUN|COUNCIL_STEPS|PIPELINE_SUMMARY|DATASETS_DIR)=' | sort | tr '\n' ' ' || true)
export BENCH_COMMAND="${knobs}bench/run.sh"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
results=${BENCH_RESULTS_DIR:-bench/results}
mkdir -p "$results"
log="$results/run-${BENCH_SESSION}.log"

started=$SECONDS
declare -A took
failed=()
for section in $SECTIONS; do
  case $section in
    throughput|tokenization|accuracy|pipeline) ;;
    *) echo "bench/run.sh: unknown section '$section' (throughput tokenization accuracy pipeline)" >&2; exit 2 ;;
  esac
  echo "== $section" | tee -a "$log"
  begun=$SECONDS
  # A failed section is reported at the end; the others still run and the page is still regenerated.
  "$PYTHON" -m "bench.$section" 2>&1 | tee -a "$log" || failed+=("$section")
  took[$section]=$((SECONDS - begun))
done
"$PYTHON" -m bench.report | tee -a "$log"

{
  echo "== seconds per section"
  for section in $SECTIONS; do echo "$section: ${took[$section]}"; done
  echo "total: $((SECONDS - started))"
} | tee -a "$log"
if [ ${#failed[@]} -gt 0 ]; then
  echo "bench/run.sh: failed sections: ${failed[*]} (see $log)" >&2
  exit 1
fi
