"""kubetune's benchmarks: training throughput, tokenization, accuracy and the local pipeline.

`bench/run.sh` runs the CPU set; each section appends its rows to bench/results/<section>.csv and
`python -m bench.report` regenerates BENCHMARKS.md from those files. See BENCHMARKS.md.
"""
