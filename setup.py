"""Build hook: compile bpf/ with clang and ship the objects inside the package.

A source build (pip install from the sdist or a checkout) needs clang and the kernel's
UAPI headers (linux-libc-dev); without them it stops with a one-line hint. A wheel carries
the compiled objects and needs neither."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
HINT = ("xdplb: building the data plane needs clang (clang-19 or newer) and the Linux UAPI "
        "headers: apt-get install clang-19 libc6-dev linux-libc-dev make (or set CLANG=/path)")


def _clang() -> str | None:
    for name in (os.environ.get("CLANG"), "clang-19", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class BuildWithBpf(build_py):
    def run(self):
        out = ROOT / "build" / "bpf"
        data = ROOT / "src" / "xdplb" / "_data"
        clang = _clang()
        if clang is None or shutil.which("make") is None:
            sys.exit(HINT)
        try:
            subprocess.run(["make", "-s", "-C", str(ROOT / "bpf"), f"OUT={out}",
                            f"CLANG={clang}"], check=True)
        except subprocess.CalledProcessError:
            sys.exit(HINT + " (the compiler's messages are above)")
        data.mkdir(exist_ok=True)
        for obj in out.glob("*.bpf.o"):
            shutil.copy2(obj, data / obj.name)
        super().run()


setup(cmdclass={"build_py": BuildWithBpf})
