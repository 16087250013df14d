"""How `kubetune run` should use this machine's cores: several CPU ranks of one thread each (DeepSpeed ZeRO-2
across processes, as on a cluster) or one rank with every core as its threads.

Each layout trains the same tokenized data (the demo ledger as the embedded default tokenizes it) for
the same number of optimizer steps of the same global batch, from the same seed, in its own process
tree; the figure is kubetune's SpeedCallback's `speed/train_samples_per_second` (samples summed over
ranks, over the time inside training steps) and the wall time of the whole `kubetune train`. Layouts
are interleaved (A B A B ...) so drift hits both alike; the report takes medians.

    python -m bench.local_layout --steps 120 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from bench.common import REPO_ROOT, WORK_DIR, append_rows, bench_env, run_info

DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


def layouts(cores: int, global_batch: int) -> dict[str, tuple[list[str], dict[str, str], list[str]]]:
    """name → (command prefix, environment, overrides): the same global batch for each."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(cores), "-m", "kubetune"]
    single = [sys.executable, "-m", "kubetune"]
    return {
        f"{cores} ranks x 1 thread, DeepSpeed ZeRO-2": (
            torchrun, {"OMP_NUM_THREADS": "1"},
            ["deepspeed.enable=true", f"cluster.gpus_per_worker={cores}", f"training.batch_size={global_batch // cores}"]),
        f"1 rank x {cores} threads": (
            single, {"OMP_NUM_THREADS": str(cores)},
            ["deepspeed.enable=false", "cluster.gpus_per_worker=1", f"training.batch_size={global_batch}"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--config", default=str(DEMO_CONFIG))
    parser.add_argument("overrides", nargs="*", help="config overrides for every layout (e.g. serialize.include_column_names=false)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    work = WORK_DIR / "local_layout"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, **bench_env()}
    data = work / "tokenized"
    for stage, extra in (("preprocess", []), ("tokenize", ["--input", str(work / "preprocessed")])):
        output = work / ("preprocessed" if stage == "preprocess" else "tokenized")
        subprocess.run([sys.executable, "-m", "kubetune", stage, "--config", args.config, "--output", str(output), *extra,
                        *args.overrides], check=True, env=env, stdout=subprocess.DEVNULL)
    rows = []
    for repeat in range(args.repeats):
        for name, (prefix, layout_env, overrides) in layouts(cores, args.global_batch).items():
            output = work / f"train-{repeat}-{len(rows)}"
            command = [*prefix, "train", "--config", args.config, "--data", str(data), "--output", str(output),
                       f"training.max_steps={args.steps}", "training.eval_steps=1000000", "training.save_steps=1000000",
                       "tracking.enable=false", *overrides, *args.overrides]
            started = time.perf_counter()
            with (work / f"{output.name}.log").open("w") as log:
                subprocess.run(command, check=True, env={**env, **layout_env}, stdout=log, stderr=subprocess.STDOUT)
            wall = time.perf_counter() - started
            metrics = json.loads((output / "model" / "training_metrics.json").read_text())
            rows.append({"layout": name, "repeat": repeat, "steps": args.steps, "global_batch": args.global_batch,
                         "samples_per_s": metrics["speed/train_samples_per_second"],
                         "tokens_per_s": metrics["speed/train_tokens_per_second"], "wall_seconds": wall,
                         "overrides": " ".join(args.overrides)})
            print(f"{name}: {rows[-1]['samples_per_s']:.1f} samples/s, {wall:.0f} s", flush=True)
            shutil.rmtree(output)
    append_rows("local_layout", run_info(), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
