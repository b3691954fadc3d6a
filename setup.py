"""setup.py drives the CMake build (CMakeLists.txt is the one description of it)."""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        output_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        output_dir.mkdir(parents=True, exist_ok=True)
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        import pybind11

        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DRMT_OUTPUT_DIR={output_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('RMT_BUILD_TYPE', 'Release')}",
        ]
        try:
            import ninja  # noqa: F401
            configure += ["-G", "Ninja"]
        except ImportError:
            pass
        # Always explicit: a CMake cache keeps an option's last value otherwise.
        off = lambda name: "OFF" if os.environ.get(name) == "0" else "ON"  # noqa: E731
        configure.append(f"-DRMT_USE_OPENMP={off('RMT_USE_OPENMP')}")
        configure.append(f"-DRMT_WITH_MODELS={off('RMT_WITH_MODELS')}")
        subprocess.run(configure, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)


setup(
    packages=find_packages("python"),
    package_dir={"": "python"},
    package_data={"rmt": ["py.typed", "*.pyi", "_core/*.pyi"]},
    ext_modules=[CMakeExtension("rmt._core")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
