"""Launch the vitlm demo: `python demos/app.py [--host 127.0.0.1] [--port 7860] [--share]` (same as `vitlm demo`)."""

import sys

from vitlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
