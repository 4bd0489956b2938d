"""Run a program with every thread under cProfile, and write how often each function ran.

    python bench/count_calls.py OUT.json -m flowflexd run -c CONFIG ...
    python bench/count_calls.py OUT.json bench/least_daemon.py URL ROOT COUNT THREADS

Used by ``run.py --only counts``. CPU per file on a shared machine moves by
several per cent from one run to the next, more than most single changes to
the per-file path are worth; how many Python functions (and builtins) run
per file does not. Each thread gets a profiler of its own as it starts
(``threading.setprofile`` hands each new thread a function that swaps itself
for one); at exit OUT.json holds each function's calls summed over every
thread, keyed ``file:line:name`` (a builtin by its name alone).
"""

from __future__ import annotations

import atexit
import cProfile
import json
import runpy
import sys
import threading
from types import FrameType
from typing import Any

_profiles: list[cProfile.Profile] = []


def _profile_this_thread(frame: FrameType, event: str, arg: Any) -> None:
    sys.setprofile(None)
    profile = cProfile.Profile()
    _profiles.append(profile)
    profile.enable()


def _write(out: str) -> None:
    counts: dict[str, int] = {}
    for profile in _profiles:
        for entry in profile.getstats():
            code = entry.code
            if isinstance(code, str):
                key = code
            else:
                key = f"{code.co_filename}:{code.co_firstlineno}:{code.co_name}"
            counts[key] = counts.get(key, 0) + entry.callcount
    with open(out, "w") as f:
        json.dump(counts, f)


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    out, target, *rest = sys.argv[1:]
    module = rest.pop(0) if target == "-m" else None
    sys.argv = [module or target, *rest]
    threading.setprofile(_profile_this_thread)
    atexit.register(_write, out)
    profile = cProfile.Profile()
    _profiles.append(profile)
    profile.enable()
    if module is not None:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(target, run_name="__main__")


if __name__ == "__main__":
    main()
