"""BentoML: a service with one batchable API (adaptive batching).

``POST /classify`` as ``multipart/form-data`` with the JPEG as the file field ``images``. The
API takes ``list[Path]``: a batchable API takes and gives lists, and BentoML's adaptive
batcher merges the lists of concurrent requests into one call of up to ``--max-batch-size``
images (how long it waits to fill a batch it decides itself, from the latencies it has seen:
it has no fixed wait, so ``--batch-timeout-ms`` is not used). The answer is a JSON list
holding one top-5 list per image. One worker process.

Started as ``python bentoml_server.py --model M --port P ...``: this script hands itself to
``bentoml serve`` with the flags in the environment.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402

if __name__ == "__main__":
    args = common.flags(__doc__)
    os.environ["PEER_ARGS"] = json.dumps(vars(args))
    os.environ["BENTOML_DO_NOT_TRACK"] = "True"  # no usage reports (and no network here)
    os.chdir(HERE)
    os.execv(sys.executable, [sys.executable, "-m", "bentoml", "serve", "bentoml_server:Classifier",
                              "--host", "127.0.0.1", "--port", str(args.port)])

import bentoml  # noqa: E402

ARGS = json.loads(os.environ.get("PEER_ARGS", "{}"))


@bentoml.service(workers=1)
class Classifier:
    def __init__(self) -> None:
        self.classifier = common.Classifier(ARGS["model"], ARGS["threads"])

    @bentoml.api(batchable=True, max_batch_size=ARGS.get("max_batch_size", 8))
    def classify(self, images: list[Path]) -> list[list[dict]]:
        return self.classifier.classify([path.read_bytes() for path in images])
