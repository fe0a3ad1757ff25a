"""NVIDIA PyTriton: the real ``tritonserver`` (shipped in the wheel) with a Python model
behind it, Triton's dynamic batcher in front.

``POST /v2/models/efficientnet-lite0/infer`` (the Open Inference Protocol, as Triton's own
HTTP client sends it): input ``image``, ``BYTES`` ``[1, 1]``, the JPEG in the binary-data
extension (JSON header, then the 4-byte length and the bytes); outputs ``labels`` (``BYTES``
``[1, 5]``) and ``probabilities`` (``FP32`` ``[1, 5]``) as JSON. Triton's dynamic batcher
forms batches of up to ``--max-batch-size`` requests, waiting at most
``--batch-timeout-ms``; ``@batch`` hands the model one stacked batch. One model instance.
"""

from __future__ import annotations

import os
import signal
import socket
import sysconfig

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

import common


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_this_interpreters_libpython() -> None:
    """tritonserver runs the model in its Python backend stub, which links
    ``libpython3.11.so.1.0`` and finds the system's (Debian's 3.11.2) first; with this
    venv's standard library (another 3.11.x) that mismatch fails the model's start
    (``'_thread.RLock' object has no attribute '_recursion_count'``). Put the library of the
    interpreter running this script first."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p)


def main() -> None:
    args = common.flags(__doc__)
    use_this_interpreters_libpython()
    # PyTriton stops tritonserver and removes its workspace and shared memory on Ctrl-C;
    # the bench stops servers with SIGTERM: treat it alike.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    classifier = common.Classifier(args.model, args.threads)

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        answers = classifier.classify([bytes(row[0]) for row in image])
        labels = np.array([[p["label"].encode() for p in top] for top in answers], dtype=np.object_)
        probabilities = np.array([[p["probability"] for p in top] for top in answers],
                                 dtype=np.float32)
        return {"labels": labels, "probabilities": probabilities}

    config = TritonConfig(http_address="127.0.0.1", http_port=args.port,
                          grpc_address="127.0.0.1", grpc_port=free_port(),
                          metrics_port=free_port(), allow_metrics=False, exit_timeout_secs=5)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=common.MODEL_NAME,
            infer_func=infer,
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="labels", dtype=np.bytes_, shape=(common.TOP_K,)),
                     Tensor(name="probabilities", dtype=np.float32, shape=(common.TOP_K,))],
            config=ModelConfig(max_batch_size=args.max_batch_size,
                               batcher=DynamicBatcher(
                                   max_queue_delay_microseconds=int(args.batch_timeout_ms * 1000))),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
