"""Build of swiftkern and its compiled extensions.

Extensions (all optional at import time, see swiftkern/_ext.py):
  swiftkern._C             op schemas of the kernel library (namespace swiftkern_C) and, when CUDA is
                           built, the CUDA kernels (csrc/cuda/*.cu free of torch headers + *.cpp binds)
  swiftkern._C_cpu_avx512  CPU kernels (csrc/cpu/*.cpp) compiled for AVX-512 (F, BW, VL, DQ; no BF16 instructions needed)
  swiftkern._C_cpu_avx2    the same sources compiled for AVX2 (the portable path)
Exactly one CPU library is loaded at run time, chosen from the CPU's features
(SWIFTKERN_CPU_ISA=avx512|avx2 forces one).

Environment switches:
  SWIFTKERN_NO_EXT=1   build no C++ at all (pure Python; every op uses the reference / Triton)
  SWIFTKERN_NO_CUDA=1  skip CUDA sources even when nvcc and a CUDA build of torch are present
  SWIFTKERN_CUDA_ARCH  CUDA architectures (default "8.0;9.0")
  SWIFTKERN_CPU_ISAS   CPU kernel libraries to build (default "avx512,avx2"; e.g. "avx2" for a
                       faster development rebuild)
"""

from __future__ import annotations

import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() not in ("", "0", "false", "no")


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _cuda_home() -> str | None:
    """The CUDA toolkit that the nvcc on PATH runs (nvcc may be a wrapper script)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None
    real = os.path.realpath(nvcc)
    with open(real, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"#!"):
        for tok in head.decode(errors="ignore").split():
            if tok.endswith("/bin/nvcc") and os.path.exists(tok):
                return os.path.dirname(os.path.dirname(tok))
    return os.path.dirname(os.path.dirname(real))


def extensions():
    if _flag("SWIFTKERN_NO_EXT"):
        return [], {}
    import torch
    from torch.utils import cpp_extension as ce

    common = ["-O3", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
    inc = [os.path.join(ROOT, "csrc", "include")]
    exts = []
    cuda_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    cuda_binds = _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
    cuda_home = _cuda_home()
    use_cuda = (
        not _flag("SWIFTKERN_NO_CUDA")
        and torch.version.cuda is not None
        and cuda_home is not None
        and bool(cuda_sources)
    )
    main_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))
    if use_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        ce.CUDA_HOME = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", os.environ.get("SWIFTKERN_CUDA_ARCH", "8.0;9.0"))
        site_inc = os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu13", "include")
        exts.append(
            ce.CUDAExtension(
                "swiftkern._C",
                main_sources + cuda_binds + cuda_sources,
                include_dirs=inc + [os.path.abspath(site_inc)],
                define_macros=[("SWIFTKERN_WITH_CUDA", "1")],
                extra_compile_args={
                    "cxx": common,
                    "nvcc": ["-O3", "-std=c++20", "-lineinfo", "-Xptxas", "-warn-spills"],
                },
            )
        )
    else:
        exts.append(ce.CppExtension("swiftkern._C", main_sources, include_dirs=inc,
                                    extra_compile_args={"cxx": common}))
    cpu_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    isa_flags = {
        "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                   "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
        "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    }
    wanted = os.environ.get("SWIFTKERN_CPU_ISAS", "avx512,avx2").replace(" ", "").split(",")
    unknown = set(wanted) - set(isa_flags)
    if unknown:
        raise SystemExit(f"SWIFTKERN_CPU_ISAS: unknown ISA(s) {sorted(unknown)}; use {list(isa_flags)}")
    if cpu_sources:
        for isa, flags in isa_flags.items():
            if isa not in wanted:
                continue
            exts.append(
                ce.CppExtension(
                    f"swiftkern._C_cpu_{isa}",
                    cpu_sources,
                    include_dirs=inc,
                    define_macros=[("SWIFTKERN_ISA", isa)],
                    extra_compile_args={"cxx": common + flags + ["-fopenmp"]},
                    extra_link_args=["-fopenmp"],
                )
            )
    return exts, {"build_ext": ce.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()

setup(
    packages=[
        "swiftkern",
        "swiftkern.ops",
        "swiftkern.nn",
        "swiftkern.patch",
        "swiftkern.bench",
        "swiftkern.triton_kernels",
    ],
    package_dir={"swiftkern": "swiftkern", "swiftkern.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
