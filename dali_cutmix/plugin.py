"""The compiled half of the native backend: ``fn.dali_cutmix.mix``, a DALI plugin built from
``csrc/mix_op.cc`` with the machine's C++ compiler against the installed DALI's headers.

:func:`load` builds it on first use (a few seconds; ``scripts/setup.sh`` does it ahead) into
``dali_cutmix/_build/`` (``~/.cache/dali_cutmix`` for a read-only install, or
``$DALI_CUTMIX_BUILD_DIR``), keyed by a hash of the source, the DALI version and the flags, so an
upgrade of either rebuilds it, then loads it into DALI once per process.

    python -m dali_cutmix.plugin              # build (if needed) and print the library's path
    python -m dali_cutmix.plugin --headers    # exit 1 if the CUDA headers it needs are missing
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from .errors import UserError

SOURCE = Path(__file__).parent / "csrc" / "mix_op.cc"
# -ffp-contract=off: no fused multiply-adds, so the box formula rounds as NumPy's does.
FLAGS = ["-std=c++20", "-O3", "-fPIC", "-shared", "-ffp-contract=off", "-Wno-c++20-extensions"]

# PyPI packages with the CUDA headers, for machines without a toolkit: package -> folder in nvidia/.
PIP_HEADERS = {
    "nvidia-cuda-runtime-cu12": "cuda_runtime",
    "nvidia-cuda-nvcc-cu12": "cuda_nvcc",  # crt/host_config.h
    "nvidia-cuda-cccl-cu12": "cuda_cccl",  # nv/target
}

_loaded: Path | None = None  # like DALI's registry of operators, once per process


class PluginError(UserError, RuntimeError):
    """The plugin cannot be built or loaded; the message says what is missing."""


def _cuda_includes() -> list[Path]:
    """Folders with ``cuda_runtime.h`` and what it includes: DALI's headers include it for type
    names only (the operator runs on the CPU). A CUDA toolkit's, or the three header packages
    ``scripts/setup.sh`` installs from PyPI on a machine without one."""
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        include = Path(root or "/nonexistent") / "include"
        if (include / "cuda_runtime.h").is_file() and (include / "crt" / "host_config.h").is_file():
            return [include]
    nvidia = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    pip = [nvidia / name / "include" for name in PIP_HEADERS.values()]
    if all(d.is_dir() for d in pip):
        return pip
    raise PluginError(
        "no CUDA headers for building the dali_cutmix plugin: set CUDA_HOME to a CUDA toolkit, or "
        f"pip install {' '.join(PIP_HEADERS)} (scripts/setup.sh does)"
    )


def _command(output: Path) -> list[str]:
    import nvidia.dali.sysconfig as dali_sysconfig

    cxx = shutil.which(os.environ.get("CXX") or "g++") or (None if os.environ.get("CXX") else shutil.which("c++"))
    if cxx is None:
        named = f" (CXX={os.environ['CXX']!r} is not a program)" if os.environ.get("CXX") else ""
        raise PluginError(
            f"no C++ compiler for the dali_cutmix plugin{named}: install g++ (Debian: apt-get install g++)"
        )
    include = [f"-I{d}" for d in _cuda_includes()]
    return [
        cxx,
        *FLAGS,
        str(SOURCE),
        "-o",
        str(output),
        *dali_sysconfig.get_compile_flags(),
        *include,
        *dali_sysconfig.get_link_flags(),
    ]


def library_path() -> Path:
    """Where the library for this source, DALI version and flag set lives (built or not)."""
    import nvidia.dali

    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), nvidia.dali.__version__.encode(), " ".join(FLAGS).encode()):
        key.update(part)
    root = os.environ.get("DALI_CUTMIX_BUILD_DIR")
    if not root:
        # Beside the source in a checkout; a read-only install (site-packages) builds in the cache.
        package = Path(__file__).parent
        root = package / "_build" if os.access(package, os.W_OK) else Path.home() / ".cache" / "dali_cutmix"
    return Path(root) / f"libdali_cutmix_{key.hexdigest()[:16]}.so"


def build(force: bool = False) -> Path:
    """Compile the plugin if it is not there yet; returns its path."""
    output = library_path()
    if output.is_file() and not force:
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    # Compile beside the target and rename: concurrent builds (pytest workers, torchrun ranks)
    # never load a half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=output.parent)
    os.close(fd)
    try:
        result = subprocess.run(_command(Path(tmp)), capture_output=True, text=True)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line]
            raise PluginError(f"building {SOURCE} failed: {(errors or result.stderr.splitlines() or ['?'])[0]}")
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for stale in output.parent.glob("libdali_cutmix_*.so"):
        if stale != output:  # builds of an earlier source or DALI; a process that loaded one keeps it
            stale.unlink(missing_ok=True)
    return output


def load() -> Path:
    """Build if needed and load into DALI (once per process); ``fn.dali_cutmix.mix`` exists after."""
    global _loaded
    if _loaded is None:
        import nvidia.dali.plugin_manager as plugin_manager

        path = build()
        plugin_manager.load_library(str(path))
        _loaded = path
    return _loaded


if __name__ == "__main__":
    try:
        if "--headers" in sys.argv[1:]:
            print(*_cuda_includes())
            sys.exit(0)
        print(build(force="--force" in sys.argv[1:]))
    except PluginError as e:
        sys.exit(f"error: {e}")
