"""On the users' machines, not only this one: no compiler, no root or apt, the package installed
as a wheel outside the checkout and run from another folder."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

from conftest import train_args

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("dali-cutmix-train", "dali-cutmix-prepare", "dali-cutmix-bench", "dali-cutmix-preview",
            "dali-cutmix-scan", "dali-cutmix-build")  # fmt: skip


def no_compiler_env(tmp_path) -> dict:
    """An environment where the operator is not built yet and no C++ compiler can be found."""
    env = {k: v for k, v in os.environ.items() if k != "DALI_CUTMIX_DEBUG"}
    return env | {"CXX": "/nonexistent/c++", "DALI_CUTMIX_BUILD_DIR": str(tmp_path / "no-build"),
                  "DALI_CUTMIX_CACHE": str(tmp_path / "cache")}  # fmt: skip


def test_train_py_runs_with_no_compiler_reachable(jpeg_tree, tmp_path):
    """The CPU default falls back to the python backend in one line that says why and how to get
    the fast path; --no-cutmix trains too; an explicit native backend is one line naming the cause."""
    env = no_compiler_env(tmp_path)
    quick = ("--epochs", "1", "--max-steps", "2")
    runs = {
        "default": [],
        "no-cutmix": ["--no-cutmix"],
        "native": ["--cutmix-backend", "native"],
    }
    done = {}
    for name, flags in runs.items():
        args = train_args(jpeg_tree, tmp_path / name, *quick, *flags)
        done[name] = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], env=env, cwd=tmp_path,
                                    capture_output=True, text=True, timeout=600)  # fmt: skip
    default = done["default"]
    assert default.returncode == 0, default.stderr[-2000:]
    fallback = [line for line in default.stderr.splitlines() if line.startswith("dali-cutmix: ")]
    assert len(fallback) == 1 and "no C++ compiler" in fallback[0] and "backend 'python'" in fallback[0]
    assert "CXX='/nonexistent/c++'" in fallback[0] and "install g++" in fallback[0]
    assert (tmp_path / "default" / "checkpoint_0001.pt").is_file()
    assert done["no-cutmix"].returncode == 0, done["no-cutmix"].stderr[-2000:]
    native = done["native"]
    last = native.stderr.strip().splitlines()[-1]
    assert native.returncode == 2 and last.startswith("train.py: error: ") and "no C++ compiler" in last
    assert "Traceback" not in native.stderr
    assert not (tmp_path / "no-build").exists() or not list((tmp_path / "no-build").glob("*.so"))


def _fake_bin(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def test_setup_without_root_or_apt_says_what_it_skipped_and_leaves_a_venv(tmp_path):
    """scripts/setup.sh where apt cannot run: one line per skipped package naming what it costs,
    the venv set up all the same, and a failed operator build said in one line, not fatal."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", checkout / "scripts")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    _fake_bin(bin_dir, "id", "echo 1000")  # not root
    _fake_bin(bin_dir, "sudo", "exit 1")  # no password-less sudo
    _fake_bin(bin_dir, "dpkg", "exit 1")  # nothing installed
    (checkout / ".venv" / "bin").mkdir(parents=True)  # a venv whose python records what it is asked
    _fake_bin(checkout / ".venv" / "bin", "python",
              f'echo "$*" >> {log}\n'
              '[ "$2" = dali_cutmix.plugin ] && [ -z "$3" ] && { echo "dali-cutmix-build: error: no C++ compiler"; '
              'exit 1; }\nexit 0')  # fmt: skip
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=checkout, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    skipped = [line for line in lines if line.startswith("setup: skipped Debian's ")]
    assert len(skipped) == 4 and all("(no root and no password-less sudo): " in line for line in skipped)
    assert any("g++ " in line and "backend python" in line for line in skipped)
    assert any("dataset-fashion-mnist" in line and "--data DIR" in line for line in skipped)
    assert lines[-1] == "setup: skipped the native operator (no C++ compiler): CutMix on the CPU runs on backend python"
    calls = log.read_text()
    assert "-m pip install -q torch torchvision" in calls and "-e .[test,lightning,accelerate]" in calls


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory):
    """The project built as a wheel and installed (no dependencies: the venv has them) into a
    scratch folder, as pip puts it in a site-packages outside any checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp / "dist")],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    wheel = next((tmp / "dist").glob("dali_cutmix-*.whl"))
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    return tmp, site


def test_the_wheel_installs_its_packages_and_a_command_per_job(wheel_install):
    tmp, site = wheel_install
    tops = {p.name for p in site.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", "bin"))}
    assert tops == {"dali_cutmix", "dali_cutmix_trainer", "dali_cutmix_bench", "pipelines"}  # no `trainer`
    assert (site / "dali_cutmix" / "csrc" / "mix_op.cc").is_file()
    env = os.environ | {"PYTHONPATH": str(site)}
    for command in COMMANDS:
        done = subprocess.run([str(site / "bin" / command), "--help"], cwd=tmp, env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0 and done.stdout.startswith("usage: "), (command, done.stderr[-1000:])


def _read_only(folder: Path, view: Path) -> bool:
    """``view``: ``folder`` read-only (a read-only bind mount as root, whom file modes do not stop)."""
    view.mkdir()
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
        shutil.rmtree(view)
        view.symlink_to(folder)
        return True
    mounted = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True).returncode == 0
    remount = ["mount", "-o", "remount,bind,ro", str(view)]
    return mounted and subprocess.run(remount, capture_output=True).returncode == 0


def test_the_installed_trainer_runs_from_any_folder_and_builds_into_the_users_cache(wheel_install, jpeg_tree):
    """From a folder outside the checkout, with the package in a read-only site-packages, the
    command trains; the operator is built into the user's cache, not beside the package."""
    tmp, site = wheel_install
    view = tmp / "site-ro"
    if not _read_only(site, view):
        pytest.skip("cannot make a read-only site-packages here (no bind mount)")
    try:
        env = os.environ | {"PYTHONPATH": str(view), "DALI_CUTMIX_CACHE": str(tmp / "cache")}
        env.pop("DALI_CUTMIX_BUILD_DIR", None)
        where = subprocess.run([sys.executable, "-c", "import dali_cutmix, dali_cutmix.plugin as p; "
                                "print(dali_cutmix.__file__); print(p.build_dir())"], cwd=tmp, env=env,
                               capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
        assert where == [str(view / "dali_cutmix" / "__init__.py"), str(tmp / "cache" / "plugin")]
        run = tmp / "elsewhere"
        run.mkdir()
        args = train_args(jpeg_tree, "out", "--epochs", "1", "--max-steps", "2", "--cutmix-backend", "native")
        done = subprocess.run([str(view / "bin" / "dali-cutmix-train"), *args], cwd=run, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert (run / "out" / "checkpoint_0001.pt").is_file()
        assert list((tmp / "cache" / "plugin").glob("libdali_cutmix_*.so"))
        assert not (site / "dali_cutmix" / "_build").exists()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(view)], check=False)
        else:
            subprocess.run(["chmod", "-R", "u+w", str(site)], check=False)


def test_license_and_citation():
    import yaml

    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["license"] == "Apache-2.0" and citation["cff-version"] == "1.2.0"
    paper = citation["references"][0]
    assert paper["title"].startswith("CutMix") and paper["year"] == 2019
    assert paper["authors"][0]["family-names"] == "Yun"
