"""Raw ONNX Runtime throughput of the int8 model against fp32, interleaved, one run.

Usage::

    python models/int8_speed.py [--out models/build] [--threads 2] [--batches 1,8]
                                [--rounds 6] [--seconds 1.5] [MODEL.onnx ...]

Sessions as the server makes them (CPU provider, ``--threads`` intra-op threads, one
inter-op thread, all graph optimisations), fed the preprocessed ``chelsea.jpg`` (repeated
to the batch size).  For each batch size the models take turns: ``--rounds`` rounds, each
runs every model for ``--seconds``, so a change in the machine's load hits them alike.
Reported per model and batch: images/s (median over the rounds) and the ratio to the
first model (fp32), median of the per-round ratios.  Prints a Markdown table and the CPU's
relevant flags; not a timed test, just a measurement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from int8_gate import cpu_info  # noqa: E402
from preprocess_reference import load_config, preprocess  # noqa: E402


def session(path: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def images_per_second(sess, name: str, x: np.ndarray, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while True:
        sess.run(None, {name: x})
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n * x.shape[0] / elapsed


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "build"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("models", nargs="*", help="ONNX files, the first is the reference "
                        "[default: efficientnet-lite0.onnx efficientnet-lite0-int8.onnx]")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    paths = args.models or [os.path.join(out, "efficientnet-lite0.onnx"),
                            os.path.join(out, "efficientnet-lite0-int8.onnx")]
    config = load_config(os.path.join(out, "efficientnet-lite0.json"))
    one = preprocess(os.path.join(out, "photos", "chelsea.jpg"), config)
    sessions = [session(p, args.threads) for p in paths]
    names = [os.path.basename(p).removesuffix(".onnx") for p in paths]
    cpu = cpu_info()
    flags = ", ".join(f for f, on in cpu["flags"].items() if on)
    print(f"CPU: {cpu['model']}, {cpu['logical_cpus']} logical CPUs; flags: {flags}; "
          f"VNNI: {'yes' if cpu['vnni'] else 'no'}")
    print(f"ONNX Runtime {ort.__version__}, {args.threads} intra-op threads, "
          f"{args.rounds} interleaved rounds x {args.seconds}s per model and batch size\n")
    print("| model | batch | img/s (median) | ÷ fp32 (median of rounds) | min–max ratio |")
    print("| --- | ---: | ---: | ---: | --- |")
    for batch in (int(b) for b in args.batches.split(",")):
        x = np.repeat(one, batch, axis=0)
        for s in sessions:  # warm-up
            images_per_second(s, config["input"], x, 0.3)
        rates = [[] for _ in sessions]
        for r in range(args.rounds):
            order = range(len(sessions)) if r % 2 == 0 else reversed(range(len(sessions)))
            for i in order:
                rates[i].append(images_per_second(sessions[i], config["input"], x, args.seconds))
        for i, name in enumerate(names):
            ratios = [a / b for a, b in zip(rates[i], rates[0])]
            print(f"| {name} | {batch} | {statistics.median(rates[i]):.1f} "
                  f"| {statistics.median(ratios):.2f}× | {min(ratios):.2f}–{max(ratios):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
