"""Re-draw the scaling plot from a scaling.json written by `python -m advtrain bench bench=scaling`.

    python scripts/plot_scaling.py [results/bench/scaling.json] [-o results/bench/scaling.png]

The benchmark draws the same plot itself; this script redraws it from the stored numbers (e.g. for
the GPU results copied back from another machine) without re-running anything.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from advtrain.cli.bench import load_benchmarks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="?", default="results/bench/scaling.json", type=Path)
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=None,
        help="output PNG (default: scaling.png next to the JSON)",
    )
    args = parser.parse_args(argv)
    load_benchmarks()  # benchmarks/ of this checkout (the script's own folder is on sys.path, not the root)
    plot = importlib.import_module("benchmarks.scaling").plot
    data = json.loads(args.json.read_text())
    if data.get("benchmark") != "scaling":
        parser.error(f"{args.json} is not a scaling benchmark result")
    m = data["machine"]
    title = (
        f"{data['settings']['loss']} training step, {m['device']}"
        f"{' (' + m['gpu'] + ')' if 'gpu' in m else ''}, {m['torch_threads']} thread(s)"
    )
    out = plot(data["results"], args.out or args.json.with_name("scaling.png"), title)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
