"""Build attnzoo and its compiled extension ``attnzoo._C`` (sources in ``csrc/``).

* C++ kernels (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) are always compiled.
* CUDA kernels (``csrc/cuda/*.cu``) are compiled when torch is a CUDA build and a
  CUDA toolkit is found (``TORCH_CUDA_ARCH_LIST`` selects the architectures).
* ``ATTNZOO_NO_EXTENSION=1`` installs the pure-Python package (reference ops only).
* ``ATTNZOO_FORCE_CUDA=1`` compiles the CUDA sources even without a visible GPU.

Build against the installed torch: ``pip install --no-build-isolation -e .``. A release:
``python -m build --no-isolation`` (the sdist, then the wheel built from it; ``MANIFEST.in`` puts
the headers of ``csrc/`` in the sdist), checked end to end by ``scripts/check_dist.sh``.
"""

import glob
import os
import platform
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(*patterns):
    return sorted(p for pat in patterns for p in glob.glob(os.path.join("csrc", pat)))


def _openmp_flags(torch):
    """``-fopenmp`` on Linux with GCC when torch uses OpenMP, else nothing (serial kernels).

    ``at::parallel_for`` is header-inline: without OpenMP the kernels compile to serial loops.
    With it they join torch's OpenMP team (its bundled ``libgomp.so.1`` is already loaded
    under that soname, so the extension binds to the same runtime), MKL calls inside the
    parallel region run single-threaded, and ``torch.set_num_threads`` applies. Clang
    (macOS) is skipped: its ``libomp`` would be a second runtime. ``ATTNZOO_NO_OPENMP=1``
    opts out.
    """
    if not sys.platform.startswith("linux") or os.environ.get("ATTNZOO_NO_OPENMP"):
        return []
    if not getattr(torch._C, "has_openmp", False):
        return []
    cxx = os.environ.get("CXX", "c++")
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    if "clang" in version.lower() or "Free Software Foundation" not in version:
        return []
    return ["-fopenmp"]


def _extensions():
    if os.environ.get("ATTNZOO_NO_EXTENSION"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cxx = ["-O3", "-std=c++17", "-fvisibility=hidden"]
    if platform.machine() in ("x86_64", "AMD64"):
        # at::vec picks its vector width from these macros; AVX2 + FMA run on any x86-64 CPU since 2013.
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    openmp = _openmp_flags(torch)
    cxx += openmp
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    sources = _sources("*.cpp", "cpu/*.cpp")
    with_cuda = (torch.version.cuda is not None and CUDA_HOME is not None) and (
        torch.cuda.is_available() or os.environ.get("ATTNZOO_FORCE_CUDA") or os.environ.get("TORCH_CUDA_ARCH_LIST")
    )
    if with_cuda:
        sources += _sources("cuda/*.cpp", "cuda/*.cu")
        nvcc = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
        ext = CUDAExtension(
            "attnzoo._C", sources, include_dirs=include_dirs,
            define_macros=define_macros + [("ATTNZOO_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=openmp,
        )
    else:
        ext = CppExtension(
            "attnzoo._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx}, extra_link_args=openmp,
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    # attnzoo and every subpackage (ops, testing, tools, ...); the built-in variants ship as attnzoo_plugins
    packages=[*find_packages(include=["attnzoo", "attnzoo.*"]), "attnzoo_plugins"],
    package_dir={"attnzoo_plugins": "plugins"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
