"""The compiled half of the native backend: ``fn.dali_cutmix.mix``, a DALI plugin built from
``csrc/mix_op.cc`` with the machine's C++ compiler against the installed DALI's headers.

:func:`load` builds it on first use (about 20 s; ``scripts/setup.sh`` does it ahead) into
``$DALI_CUTMIX_BUILD_DIR``, else ``dali_cutmix/_build/`` beside the source when that folder can
be written (a checkout, an editable install), else the user's cache (``plugin/`` under
:func:`dali_cutmix.files.cache_root`: an install in a read-only site-packages). The library's
name is a hash of the source, the DALI version, the flags and the compiler, so an upgrade of any
of them, or another compiler, builds anew. It is loaded into DALI once per process.

Compilers: GCC 11 or later (Ubuntu 22.04's 11.4 and Debian 12's 12.2 are tested to write the same
bytes); an older GCC is refused in one line that names it and what to install. One library serves
every x86-64 CPU: the pixel work is compiled for the portable baseline, AVX2 and AVX-512, and the
operator takes the best copy the CPU runs (its ``isa`` argument picks one, for measuring).
:func:`unavailable` says in one line why the operator cannot be had, for the CPU default to fall
back to a backend that needs no compiler (:func:`dali_cutmix.ops.default_backend`).

    dali-cutmix-build             # (python -m dali_cutmix.plugin) build if needed, print the path
    dali-cutmix-build --headers   # exit 1 if the CUDA headers it needs are missing
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from .errors import UserError
from .files import cache_root

SOURCE = Path(__file__).parent / "csrc" / "mix_op.cc"
# -ffp-contract=off: no fused multiply-adds, so the box formula rounds as NumPy's does, and every
# instruction-set copy of the pixel work writes the same bytes.
FLAGS = ["-std=c++20", "-O3", "-fPIC", "-shared", "-ffp-contract=off"]
MIN_GCC = 11  # the oldest GCC that builds the operator (__builtin_convertvector, C++20)
INSTALL_GCC = "install g++ 11 or later (Ubuntu 22.04 and Debian: apt-get install g++-11) and set CXX=g++-11"

# PyPI packages with the CUDA headers, for machines without a toolkit: package -> folder in nvidia/.
PIP_HEADERS = {
    "nvidia-cuda-runtime-cu12": "cuda_runtime",
    "nvidia-cuda-nvcc-cu12": "cuda_nvcc",  # crt/host_config.h
    "nvidia-cuda-cccl-cu12": "cuda_cccl",  # nv/target
}

_loaded: Path | None = None  # like DALI's registry of operators, once per process
_failed: str | None = None  # why the last load failed, so that a process tries (and compiles) once


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


def compiler() -> tuple[str, str]:
    """The C++ compiler (``$CXX``, else g++, else c++) and its version line; a
    :class:`PluginError` naming it when there is none, or when it is a GCC older than ``MIN_GCC``."""
    named = os.environ.get("CXX")
    cxx = shutil.which(named or "g++") or (None if named else shutil.which("c++"))
    if cxx is None:
        why = f" (CXX={named!r} is not a program)" if named else ""
        raise PluginError(f"no C++ compiler for the dali_cutmix plugin{why}: {INSTALL_GCC}")
    try:
        result = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
        version = (result.stdout.splitlines() or ["?"])[0].strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise PluginError(f"the C++ compiler {cxx} does not run ({e}): {INSTALL_GCC}") from e
    gcc = "clang" not in version.lower() and re.search(r"\b(\d+)\.\d+(\.\d+)?\b", version.split(")")[-1] or version)
    if gcc and int(gcc.group(1)) < MIN_GCC:
        raise PluginError(f"the C++ compiler {cxx} is GCC {gcc.group(0)}; the dali_cutmix plugin needs GCC "
                          f"{MIN_GCC} or later: {INSTALL_GCC}")  # fmt: skip
    return cxx, version


def _command(cxx: str, output: Path) -> list[str]:
    import nvidia.dali.sysconfig as dali_sysconfig

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


def build_dir() -> Path:
    """Where builds go: ``$DALI_CUTMIX_BUILD_DIR``, else beside the source when that folder can be
    written, else the user's cache."""
    if os.environ.get("DALI_CUTMIX_BUILD_DIR"):
        return Path(os.environ["DALI_CUTMIX_BUILD_DIR"])
    package = Path(__file__).parent
    return package / "_build" if os.access(package, os.W_OK) else cache_root() / "plugin"


def compiler_tag(version: str) -> str:
    """A short name for a compiler's version line, for the library's file name: ``gcc12``, ``clang14``."""
    major = re.search(r"(\d+)\.\d+", version.split(")")[-1] or version) or re.search(r"(\d+)\.\d+", version)
    family = "clang" if "clang" in version.lower() else "gcc" if re.search(r"g\+\+|gcc", version.lower()) else "cxx"
    return family + (major.group(1) if major else "")


def library_path(compiler_version: str | None = None) -> Path:
    """Where the library for this source, DALI version, flag set and compiler (``"PATH|VERSION"``;
    None: :func:`compiler`'s) lives, built or not."""
    import nvidia.dali

    version = compiler_version if compiler_version is not None else "|".join(compiler())
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), nvidia.dali.__version__, " ".join(FLAGS), version):
        key.update(part if isinstance(part, bytes) else part.encode())
        key.update(b"\0")
    return build_dir() / f"libdali_cutmix_{compiler_tag(version.split('|')[-1])}_{key.hexdigest()[:16]}.so"


def build(force: bool = False) -> Path:
    """Compile the plugin if it is not there yet; returns its path."""
    cxx, version = compiler()
    output = library_path(f"{cxx}|{version}")
    if output.is_file() and not force:
        return output
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        # Compile beside the target and rename: concurrent builds (pytest workers, torchrun ranks)
        # never load a half-written library.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=output.parent)
        os.close(fd)
    except OSError as e:
        raise PluginError(f"cannot build the dali_cutmix plugin in {output.parent} ({e.strerror or e}): set "
                          f"DALI_CUTMIX_BUILD_DIR to a writable folder") from e  # fmt: skip
    try:
        result = subprocess.run(_command(cxx, Path(tmp)), capture_output=True, text=True)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line]
            first = (errors or result.stderr.splitlines() or ["?"])[0]
            raise PluginError(f"building {SOURCE} with {cxx} ({version}) failed: {first}")
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    tag = output.name.split("_")[2]
    for stale in output.parent.glob(f"libdali_cutmix_{tag}_*.so"):
        if stale != output:  # this compiler's builds of an earlier source or DALI; a process that loaded one keeps it
            stale.unlink(missing_ok=True)
    return output


def load() -> Path:
    """Build if needed and load into DALI (once per process); ``fn.dali_cutmix.mix`` exists after.
    A :class:`PluginError` says why it cannot; a process that failed once does not try again."""
    global _loaded, _failed
    if _loaded is None:
        if _failed is not None:
            raise PluginError(_failed)
        try:
            import nvidia.dali.plugin_manager as plugin_manager

            path = build()
            try:
                plugin_manager.load_library(str(path))
            except RuntimeError as e:
                first = (str(e).strip().splitlines() or ["?"])[0]
                raise PluginError(f"DALI cannot load {path} ({first}): rebuild it with "
                                  f"`python -m dali_cutmix.plugin --force`") from e  # fmt: skip
        except PluginError as e:
            _failed = str(e)
            raise
        _loaded = path
    return _loaded


def unavailable() -> str | None:
    """None when the operator is loaded (built first if need be); else why it cannot be, in one line."""
    try:
        load()
    except PluginError as e:
        return str(e)
    return None


def main(argv=None) -> int:
    """``dali-cutmix-build``: build the operator (if needed) and print the library's path."""
    import argparse

    what = "Build the native CutMix operator (fn.dali_cutmix.mix) ahead of its first use; print the library's path."
    p = argparse.ArgumentParser(prog="dali-cutmix-build", description=what)
    p.add_argument("--force", action="store_true", help="build again even if the library exists")
    p.add_argument("--headers", action="store_true", help="print the CUDA header folders; exit 1 if missing")
    args = p.parse_args(argv)
    try:
        print(*_cuda_includes()) if args.headers else print(build(force=args.force))
    except PluginError as e:
        print(f"dali-cutmix-build: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
