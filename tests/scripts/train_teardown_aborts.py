"""launchers/train.py in a process whose interpreter teardown aborts (for tests).

An ``atexit`` handler that calls ``os.abort`` stands in for what CI met once: a C++ destructor aborting
("terminate called without an active exception") while gloo's threads still ran, after a run that had
saved everything. The launcher must end with the job's own exit code regardless.
"""

import atexit
import os
import runpy
import sys
from pathlib import Path

atexit.register(os.abort)
launcher = Path(__file__).resolve().parents[2] / "launchers" / "train.py"
sys.argv[0] = str(launcher)
runpy.run_path(str(launcher), run_name="__main__")
