#!/usr/bin/env bash
# The CPU benchmark set: training throughput (A/B/C on banking77 and the council data), tokenization,
# quality (kubetune's default vs the TF-IDF baseline vs a full fine-tune, on five data sets) and the local
# pipeline. Each section appends rows to bench/results/<section>.csv; then BENCHMARKS.md is regenerated from
# those files. Run it on a quiet machine (nothing else on the cores):
#   bench/run.sh                                         # or: make bench
#   BENCH_SECTIONS="throughput tokenization" bench/run.sh
# Time on 2 cores: throughput 19 minutes, the demo run 9, tokenization 2; quality is two whole `kubetune run`s
# per data set (the default and a full fine-tune of about the same time): hours for all five, so run it alone
# or for some data sets (BENCH_QUALITY_DATASETS), or record finished runs (python -m bench.quality --from-run).
# Knobs:
#   BENCH_SECTIONS          sections to run (throughput tokenization predict quality pipeline)
#   BENCH_PREDICT_ROWS      council rows the predict section scores (2000)
#   BENCH_TRAIN_STEPS       optimizer steps per throughput run (8)
#   BENCH_REPEATS           runs of each variant, interleaved A B C A B C ... (3)
#   BENCH_TRAIN_ROWS        train rows the throughput runs draw their batches from (steps x batch size: one epoch)
#   BENCH_QUALITY_DATASETS  quality's data sets (demo demo-by-supplier banking77 hwu64 council)
#   BENCH_QUALITY_SYSTEMS   quality's runs per data set (kubetune full-fine-tune); the baseline comes with each kubetune run
#   BENCH_COUNCIL_ROWS      the council sample for quality: data.max_rows (40000)
#   BENCH_FULL_FT_EPOCHS    epochs of the full fine-tune (default: the config's epochs / BENCH_FULL_FT_SLOWDOWN)
#   BENCH_FULL_FT_SLOWDOWN  how much slower a full fine-tune trains per epoch than LoRA (1.6, the demo in issue 11)
#   BENCH_FULL_FT_LR        learning rate of the full fine-tune (1e-4)
#   BENCH_PIPELINE_SUMMARY  report this finished `kubetune run`'s summary.json instead of running the demo
#   BENCH_DATASETS_DIR      where the datasets are (../shared/datasets)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
SECTIONS=${BENCH_SECTIONS:-throughput tokenization predict quality pipeline}
export BENCH_SESSION=${BENCH_SESSION:-$(date -u +%Y%m%dT%H%M%SZ)}
knobs=$(env | grep -E '^BENCH_(SECTIONS|PREDICT_ROWS|TRAIN_STEPS|REPEATS|TRAIN_ROWS|QUALITY_DATASETS|QUALITY_SYSTEMS|COUNCIL_ROWS|FULL_FT_EPOCHS|FULL_FT_SLOWDOWN|FULL_FT_LR|PIPELINE_SUMMARY|DATASETS_DIR)=' | sort | tr '\n' ' ' || true)
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
    throughput|tokenization|predict|quality|pipeline) ;;
    *) echo "bench/run.sh: unknown section '$section' (throughput tokenization predict quality pipeline)" >&2; exit 2 ;;
  esac
  echo "== $section" | tee -a "$log"
  begun=$SECONDS
  # A failed section is reported at the end; the others still run and the page is still regenerated.
  case $section in
    predict) command=(-m bench.predict_throughput --rows "${BENCH_PREDICT_ROWS:-2000}") ;;
    *) command=(-m "bench.$section") ;;
  esac
  "$PYTHON" "${command[@]}" 2>&1 | tee -a "$log" || failed+=("$section")
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
