"""Build hook: compile bpf/ with clang and ship the objects inside the package."""
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


class BuildWithBpf(build_py):
    def run(self):
        out = ROOT / "build" / "bpf"
        subprocess.run(["make", "-C", str(ROOT / "bpf"), f"OUT={out}"], check=True)
        data = ROOT / "src" / "xdplb" / "_data"
        data.mkdir(exist_ok=True)
        for obj in out.glob("*.bpf.o"):
            shutil.copy2(obj, data / obj.name)
        super().run()


setup(cmdclass={"build_py": BuildWithBpf})
