"""Building the library's C++ kernels with torch's extension toolchain, once per machine.

A kernel's source ships in this package; `load_extension` compiles it on first use with
`torch.utils.cpp_extension.load` (g++/clang and ninja; about 30 s, cached under
`$TORCH_EXTENSIONS_DIR`, by default `~/.cache/torch_extensions`, and rebuilt when the source, the
flags or torch change). Its vector code is built for the CPU's instruction set: AVX2 with FMA
wherever torch reports AVX2 or AVX-512, portable (compiler-vectorised) code elsewhere; the
extension's name carries which, so machines sharing a home directory never load a build their
CPU cannot run.

Where a kernel cannot be built (no compiler, no ninja, a failed compile) the callers use their
reference formulas instead: one warning says why, and training goes on at the reference speed.
`RANKERS_KERNELS=off` asks for the reference formulas without trying.

Example:
    >>> if load_extension("field_attention"):
    ...     torch.ops.rankers_kernels.field_attention_fwd(q, k, v, 1.0)
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ENV = "RANKERS_KERNELS"  # "off": never build, use the reference formulas
_SOURCES = Path(__file__).parent
_lock = threading.Lock()
_loaded: dict[str, bool] = {}
_why_not: dict[str, str] = {}


def vector_isa() -> str:
    """The instruction set the kernels are built for here: "avx2" (x86 with AVX2 or AVX-512, as
    torch reports it) or "portable"."""
    capability = torch.backends.cpu.get_cpu_capability().upper()
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return "avx2" if x86 and capability in ("AVX2", "AVX512") else "portable"


def _flags(isa: str) -> list[str]:
    common = ["-O3", "-fopenmp", "-DNDEBUG"]  # OpenMP: at::parallel_for's threads (torch's libgomp)
    if isa == "avx2":
        return [*common, "-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    return [*common, "-DCPU_CAPABILITY=DEFAULT"]


def load_extension(kernel: str) -> bool:
    """Build (first time on this machine) and load `rankers/kernels/<kernel>.cpp`, registering its
    torch ops; True when they are available, False (with one warning naming the reason) where the
    build failed or `RANKERS_KERNELS=off`."""
    with _lock:
        if kernel in _loaded:
            return _loaded[kernel]
        if os.environ.get(ENV, "").lower() in ("off", "0", "false", "no"):
            _why_not[kernel] = f"{ENV}={os.environ[ENV]}"
            _loaded[kernel] = False
            return False
        isa = vector_isa()
        name = f"rankers_{kernel}_{isa}"
        try:
            from torch.utils import cpp_extension

            _ninja_on_path()
            log.info("building the %s kernel (%s, once per machine, about 30 s)", kernel, isa)
            cpp_extension.load(
                name=name,
                sources=[str(_SOURCES / f"{kernel}.cpp")],
                extra_cflags=_flags(isa),
                extra_ldflags=["-fopenmp"],
                is_python_module=False,
                verbose=False,
            )
        except Exception as error:  # a missing compiler or ninja, a failed compile: the fallback runs
            reason = _first_error(str(error))
            log.warning(
                "the %s kernel could not be built (%s: %s); using the reference formulas, which are "
                "slower and give the same results to float tolerance",
                kernel,
                type(error).__name__,
                reason,
            )
            _why_not[kernel] = f"{type(error).__name__}: {reason}"
            _loaded[kernel] = False
            return False
        _loaded[kernel] = True
        return True


def _ninja_on_path() -> None:
    """torch runs `ninja` from PATH; a `pip install ninja` in a venv that was not activated puts
    it beside the interpreter instead, so that folder joins PATH (for this process only)."""
    import shutil
    import sys

    if shutil.which("ninja") is None:
        here = Path(sys.executable).parent
        if (here / "ninja").exists():
            os.environ["PATH"] = f"{here}{os.pathsep}{os.environ.get('PATH', '')}"


def _first_error(message: str) -> str:
    """The compiler's first `error:` line (the build's message starts with its command line)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line and "Error building extension" not in line]
    return (errors[0] if errors else lines[-1] if lines else "no message")[:300]


class Kernel:
    """One kernel's load-once state. `ready()` builds and loads it (the first call) and runs
    `register` (its fake kernels, autograd and FLOP formulas) once; `applies()` is `ready()`, except
    while dynamo traces, where it only says whether that already happened (nothing is built or
    registered inside a trace)."""

    def __init__(self, name: str, register: Callable[[], None]) -> None:
        self.name, self._register, self.loaded, self.failed = name, register, False, False
        self._lock = threading.Lock()

    def ready(self) -> bool:
        with self._lock:
            if not self.loaded and not self.failed and load_extension(self.name):
                try:
                    self._register()
                except Exception as error:  # e.g. a torch whose library API differs: the fallback runs
                    log.warning(
                        "the %s kernel was built but its torch ops could not be registered (%s: %s); "
                        "using the reference formulas",
                        self.name,
                        type(error).__name__,
                        error,
                    )
                    _why_not[self.name] = f"registration: {type(error).__name__}: {error}"
                    self.failed = True  # never half-registered twice
                    return False
                self.loaded = True
            return self.loaded

    def applies(self) -> bool:
        return self.loaded if torch.compiler.is_compiling() else self.ready()


def why_not(kernel: str) -> str | None:
    """Why `kernel` is not in use (after `load_extension` said False), else None."""
    return _why_not.get(kernel)
