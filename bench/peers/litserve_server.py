"""LitServe with batching.

``POST /predict`` with ``{"image": "<JPEG as base64>"}``; the answer is ``{"predictions":
[{"label", "probability"} x 5]}``. LitServe's inference worker (a process of its own)
gathers up to ``--max-batch-size`` requests, waiting at most ``--batch-timeout-ms``, and runs
them as one batch. One API server process, one worker, CPU.
"""

from __future__ import annotations

import base64

import litserve as ls
import numpy as np

import common


class Classify(ls.LitAPI):
    def __init__(self, args) -> None:
        super().__init__(max_batch_size=args.max_batch_size,
                         batch_timeout=args.batch_timeout_ms / 1000.0)
        self.args = args

    def setup(self, device) -> None:
        self.classifier = common.Classifier(self.args.model, self.args.threads)

    def decode_request(self, request: dict) -> np.ndarray:
        return self.classifier.tensor(base64.b64decode(request["image"]))

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(inputs, axis=0)

    def predict(self, batch: np.ndarray) -> list:
        (scores,) = self.classifier.session.run([self.classifier.output],
                                                {self.classifier.input: batch})
        return [self.classifier.top(row, common.TOP_K) for row in scores]

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output: list) -> dict:
        return {"predictions": output}


if __name__ == "__main__":
    args = common.flags(__doc__)
    server = ls.LitServer(Classify(args), accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False)
