"""`--nproc N`: the same command again under torchrun with N processes on this machine, and the
end of a torchrun rank."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence


def without_nproc(argv: Sequence[str]) -> list[str]:
    """`argv` without its --nproc flag and value (torchrun's own parser would take it)."""
    out, skip = [], False
    for a in argv:
        if skip or a.startswith("--nproc="):
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        out.append(a)
    return out


def relaunch(argv: Sequence[str], nproc: int) -> None:
    """Runs `rankers ARGV` (without --nproc) under torchrun with `nproc` processes on this machine;
    ValueError when it fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {"OMP_NUM_THREADS": "1", **os.environ}  # oversubscribed threads made steps 30x slower here
    code = subprocess.run([*command, "-m", "rankers", *without_nproc(argv)], env=env, check=False).returncode
    if code:
        raise ValueError(f"torchrun with {nproc} processes exited with code {code}")


def as_rank(work: Callable[[], None]) -> None:
    """Runs `work` as one of torchrun's ranks, then leaves the process at once."""
    import faulthandler

    import torch.distributed as dist

    faulthandler.enable()  # a rank that aborts in native code prints where Python was
    try:
        work()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # On a loaded machine a rank sometimes aborted after its work was done, during interpreter
    # shutdown ("terminate called without an active exception", no Python frame left: a native
    # thread's static destructor). Everything is written and renamed by now: leave without them.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
