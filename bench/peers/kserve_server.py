"""KServe's ModelServer with a custom ``kserve.Model``, V1 protocol.

``POST /v1/models/efficientnet-lite0:predict`` with ``{"instances": [{"image_bytes": {"b64":
"<JPEG as base64>"}}]}`` (the V1 image-classification convention); the answer is
``{"predictions": [[{"label", "probability"} x 5], ...]}``. KServe's server does not batch
across requests (in a cluster that is an agent sidecar's job): each request runs on its own,
with all its instances in one session run. One uvicorn worker, gRPC off.
"""

from __future__ import annotations

import base64
import sys

import common

ARGS = common.flags(__doc__)
sys.argv = sys.argv[:1]  # kserve parses the command line when imported

import kserve  # noqa: E402


class EfficientNet(kserve.Model):
    def __init__(self) -> None:
        super().__init__(common.MODEL_NAME)
        self.classifier: common.Classifier | None = None
        self.load()

    def load(self) -> bool:
        self.classifier = common.Classifier(ARGS.model, ARGS.threads)
        self.ready = True
        return self.ready

    def predict(self, payload: dict, headers: dict[str, str] | None = None) -> dict:
        assert self.classifier is not None
        images = [base64.b64decode(instance["image_bytes"]["b64"]) for instance in payload["instances"]]
        return {"predictions": self.classifier.classify(images)}


if __name__ == "__main__":
    kserve.ModelServer(http_port=ARGS.port, workers=1, enable_grpc=False,
                       enable_latency_logging=False).start([EfficientNet()])
