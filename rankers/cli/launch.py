"""`--nproc N` (and `--nnodes M --rdzv-endpoint HOST:PORT`): the same command again under torchrun
with N processes on this machine (on each of M machines), and the end of a torchrun rank.

Across machines, run the same `rankers train ... --nproc N --nnodes M --rdzv-endpoint HOST:PORT`
on every machine (HOST one of them, PORT free there); torchrun's c10d rendezvous gives each process
its rank. Every machine must see the dataset and `--out` at the same path (a shared filesystem):
every rank reads its share of the rows and writes its shards of the checkpoint there.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence

LAUNCH_FLAGS = ("--nproc", "--nnodes", "--rdzv-endpoint", "--rdzv-id")  # ours, not torchrun's ranks'


def without_nproc(argv: Sequence[str]) -> list[str]:
    """`argv` without the launch flags (LAUNCH_FLAGS) and their values: the ranks run it."""
    out, skip = [], False
    for a in argv:
        if skip or any(a.startswith(flag + "=") for flag in LAUNCH_FLAGS):
            skip = False
            continue
        if a in LAUNCH_FLAGS:
            skip = True
            continue
        out.append(a)
    return out


def torchrun_command(nproc: int, nnodes: int = 1, endpoint: str = "", run_id: str = "rankers") -> list[str]:
    """torchrun's command line for `nproc` processes per machine on `nnodes` machines: standalone
    on one machine; a c10d rendezvous at `endpoint` (HOST:PORT) across several. ValueError for
    several machines without an endpoint."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == 1:
        return [*command, "--standalone"]
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (one of the machines and a free port "
            f"there), got {endpoint!r}"
        )
    rendezvous = ["--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", f"--rdzv_id={run_id}"]
    return [*command, f"--nnodes={nnodes}", *rendezvous]


def relaunch(
    argv: Sequence[str], nproc: int, nnodes: int = 1, endpoint: str = "", run_id: str = "rankers"
) -> None:
    """Runs `rankers ARGV` (without the launch flags) under torchrun with `nproc` processes on this
    machine, one of `nnodes` meeting at `endpoint`; ValueError when it fails."""
    command = torchrun_command(nproc, nnodes, endpoint, run_id)
    env = {"OMP_NUM_THREADS": "1", **os.environ}  # oversubscribed threads made steps 30x slower here
    code = subprocess.run([*command, "-m", "rankers", *without_nproc(argv)], env=env, check=False).returncode
    if code:
        machines = f" per machine on {nnodes} machines" if nnodes > 1 else ""
        raise ValueError(f"torchrun with {nproc} processes{machines} exited with code {code}")


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
