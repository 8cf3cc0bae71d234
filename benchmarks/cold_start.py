"""Cold start: what `import vitlm` adds over `import torch, transformers`, and where that time goes.

Each statement runs in a fresh Python process (so nothing is cached in the interpreter), `--runs` times, in turn with
the others; the median wall time of the statement itself is reported (interpreter start-up excluded). The rows below
the first two split vitlm's cost into the transformers modules it needs: `PreTrainedModel` (modeling_utils, for the
model classes), the image-processing base (whose `transformers.image_utils` imports torchvision when it is installed,
and torchvision imports `torch._dynamo`), and the processor base.

    python benchmarks/cold_start.py [--runs 7]

Prints a markdown table and writes benchmarks/results/cold_start.json.
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BASE = "import torch, transformers"
STATEMENTS = {
    "import torch, transformers": BASE,
    "+ import vitlm": f"{BASE}; import vitlm",
    "+ transformers.modeling_utils": f"{BASE}; import transformers.modeling_utils",
    "+ transformers.image_processing_utils": f"{BASE}; import transformers.image_processing_utils",
    "+ torchvision": f"{BASE}; import torchvision",
    "vitlm --help alone (console script)": None,  # `_vitlm_cli`: no torch, no transformers
}


def seconds(statement: str | None) -> float:
    """Wall time of `statement` in a fresh interpreter (or of `vitlm --help`'s whole process)."""
    if statement is None:
        code = (
            "import time, sys, contextlib, io; t = time.perf_counter(); sys.argv = ['vitlm', '--help']\n"
            "import _vitlm_cli\nwith contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    _vitlm_cli.main()\nprint(time.perf_counter() - t)"
        )
    else:
        code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    from vitlm.cli import markdown_table

    times = {name: [] for name in STATEMENTS}
    for _ in range(args.runs):
        for name, statement in STATEMENTS.items():
            times[name].append(seconds(statement))
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["import torch, transformers"]
    rows = []
    for name, value in medians.items():
        added = "" if name == "import torch, transformers" or STATEMENTS[name] is None else f"{value - base:+.2f}"
        rows.append([name, f"{value:.2f}", added])
    setup = (
        f"median of {args.runs} fresh processes each, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, {date.today()}"
    )
    print(markdown_table(["statement", "seconds", "over torch + transformers"], rows))
    print(setup)
    RESULTS.mkdir(exist_ok=True)
    record = {"setup": setup, "median_seconds": medians, "vitlm_added_seconds": medians["+ import vitlm"] - base}
    (RESULTS / "cold_start.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
