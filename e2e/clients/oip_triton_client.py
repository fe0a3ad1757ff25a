"""Talks to a Sightline recognize server with NVIDIA Triton's stock HTTP client.

Usage: oip_triton_client.py HOST:PORT MODEL_NAME [API_KEY]

Checks nothing itself: it prints one JSON object with what the client saw (liveness,
readiness, metadata, scores and classification labels, in binary and JSON tensor
encodings), and the Rust test asserts on it. The input is a batch of two images for a
3-channel model: the first all red, the second all blue, already normalised to [0, 1].
With API_KEY every call sends it (`Authorization: Bearer`), and what a call without it
sees is reported too.
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient


def main() -> None:
    url, model = sys.argv[1], sys.argv[2]
    key = sys.argv[3] if len(sys.argv) > 3 else None

    def auth():
        # A fresh dict per call: the client's infer() writes its own headers into it.
        return {"Authorization": f"Bearer {key}"} if key else None

    client = httpclient.InferenceServerClient(url=url)
    seen = {
        "live": client.is_server_live(headers=auth()),
        "ready": client.is_server_ready(headers=auth()),
        "model_ready": client.is_model_ready(model, headers=auth()),
        "server": client.get_server_metadata(headers=auth()),
        "metadata": client.get_model_metadata(model, headers=auth()),
    }
    if key:
        try:
            client.get_model_metadata(model)
            seen["metadata_without_key"] = None
        except Exception as e:  # the client raises InferenceServerException
            seen["metadata_without_key"] = str(e)
    meta = seen["metadata"]
    input_name = meta["inputs"][0]["name"]
    output_name = meta["outputs"][0]["name"]
    shape = [2] + meta["inputs"][0]["shape"][1:]
    x = np.zeros(shape, dtype=np.float32)
    x[0, 0] = 1.0  # red
    x[1, 2] = 1.0  # blue
    for binary in (True, False):
        tensor = httpclient.InferInput(input_name, shape, "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        scores = httpclient.InferRequestedOutput(output_name, binary_data=binary)
        result = client.infer(
            model, [tensor], outputs=[scores], request_id=f"scores-{binary}", headers=auth()
        )
        seen[f"scores_binary_{binary}"] = result.as_numpy(output_name).tolist()
        seen[f"id_binary_{binary}"] = result.get_response().get("id")
        labels = httpclient.InferRequestedOutput(output_name, binary_data=binary, class_count=2)
        result = client.infer(model, [tensor], outputs=[labels], headers=auth())
        seen[f"classes_binary_{binary}"] = [
            [s.decode() if isinstance(s, bytes) else str(s) for s in row]
            for row in result.as_numpy(output_name)
        ]
    try:
        seen["repository_index"] = client.get_model_repository_index(headers=auth())
    except Exception as e:  # the client raises InferenceServerException
        seen["repository_index"] = str(e)
    try:
        client.get_model_metadata("no-such-model", headers=auth())
        seen["unknown_model_error"] = None
    except Exception as e:  # the client raises InferenceServerException
        seen["unknown_model_error"] = str(e)
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
