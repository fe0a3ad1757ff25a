"""Checks a live server's OpenAPI document: validates it with openapi-spec-validator, then
runs schemathesis against the server and fails on any 5xx (not_a_server_error).

    python openapi_check.py BASE_URL [MAX_EXAMPLES]

Exit status 0 when both pass. Bounded in time: a fixed number of examples per operation,
a per-request timeout, a fixed seed.
"""

import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from openapi_spec_validator import validate


def main() -> int:
    base = sys.argv[1].rstrip("/")
    examples = sys.argv[2] if len(sys.argv) > 2 else "10"
    with urllib.request.urlopen(base + "/api/openapi.json", timeout=10) as response:
        document = json.load(response)
    validate(document)
    print(f"valid OpenAPI {document['openapi']}: {len(document['paths'])} paths")
    schemathesis = Path(sys.executable).with_name("schemathesis")
    with tempfile.TemporaryDirectory() as reports:
        run = subprocess.run(
            [
                str(schemathesis),
                "run",
                base + "/api/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                examples,
                "--seed",
                "1",
                "--request-timeout",
                "20",
                "--no-shrink",
                "--report-dir",
                reports,
            ],
            cwd=reports,
            capture_output=True,
            text=True,
            timeout=400,
        )
    print(run.stdout[-6000:])
    print(run.stderr[-2000:], file=sys.stderr)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
