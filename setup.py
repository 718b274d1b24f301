"""Build script for cmlp: the Cython/C hot path lives in pyx/ and csrc/.

Extensions
  cmlp._frame   frame header + tensor sub-header codec, streaming decoder
  cmlp._record  in-place ChaCha20-Poly1305 record layer and libsodium primitives
  cmlp._netio   socket I/O with the GIL released, AF_VSOCK, relay byte pump
  cmlp._gpt2    GPT-2 forward pass with KV cache over BLAS
  cmlp._llama   Llama-family (llama, qwen2) forward pass with a GQA KV cache
  cmlp._wkernels  matmuls on bf16/fp16/int8 weights (runtime ISA dispatch)

Build flags are portable on purpose: no -march=native.  Hot C loops use
``target_clones`` (runtime CPU dispatch), and every object keeps symbols and
frame pointers so ``perf report`` names our functions.

Environment knobs
  CMLP_COVERAGE=1    build with -fsanitize=fuzzer-no-link for atheris (clang; fuzz/build.sh)
  CMLP_SANITIZE=...  with CMLP_COVERAGE=1, add a sanitizer: address or undefined
  CMLP_DEBUG=1       -O0, for gdb sessions
  CMLP_ONLY=a,b      build only these extensions (e.g. _frame,_record)
  CMLP_BLAS=auto     (default) CBLAS from the scipy-openblas32 wheel when it is importable
                     (a build requirement in pyproject.toml, so `pip install` of the sdist
                     needs no system BLAS), else the system OpenBLAS
  CMLP_BLAS=scipy-openblas32 / CMLP_BLAS=system   force one of the two

Missing system headers stop the build with one line naming the Debian package
(before the compiler's "fatal error: sodium.h: No such file or directory").
"""

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from typing import NamedTuple

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - pyproject.toml lists Cython
    sys.exit("Cython is required to build cmlp (pip install Cython)")


def pkg_config(package, option):
    """Flags from pkg-config, or an empty list when it is absent."""
    exe = shutil.which("pkg-config")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, option, package], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError:
        return []
    return out.stdout.split()


def split_flags(flags):
    include, libdirs, libs = [], [], []
    for f in flags:
        if f.startswith("-I"):
            include.append(f[2:])
        elif f.startswith("-L"):
            libdirs.append(f[2:])
        elif f.startswith("-l"):
            libs.append(f[2:])
    return include, libdirs, libs


class Lib(NamedTuple):
    """What linking one C library takes; ``header`` is checked before anything compiles."""

    include: list
    libdirs: list
    libs: list
    header: str
    macros: tuple = ()
    link_args: tuple = ()


def library(package, fallback_lib, header, fallback_include=()):
    include, libdirs, libs = split_flags(pkg_config(package, "--cflags") + pkg_config(package, "--libs"))
    if not libs:
        libs = [fallback_lib]
    include = include or [d for d in fallback_include if os.path.isdir(d)]
    return Lib(include, libdirs, libs, header)


def have_scipy_openblas32():
    try:
        import scipy_openblas32  # noqa: F401
    except ImportError:
        return False
    return True


def scipy_openblas32():
    """CBLAS from the scipy-openblas32 wheel.

    Its symbols carry a ``scipy_`` prefix, which csrc/cmlp_cblas.h maps cmlp's CBLAS names
    onto.  The library is found at run time next to cmlp in site-packages (a runtime
    dependency; ``$ORIGIN/..``), or where it was at build time (editable installs); a
    repaired wheel bundles it (auditwheel).
    """
    try:
        import scipy_openblas32 as sob
    except ImportError:
        sys.exit("cmlp: CMLP_BLAS=scipy-openblas32 needs the wheel: pip install scipy-openblas32")
    libdir = sob.get_lib_dir()
    rpaths = ["$ORIGIN/../scipy_openblas32/lib", libdir]
    return Lib(
        [sob.get_include_dir()],
        [libdir],
        [sob.get_library()],
        "cblas.h",
        (("CMLP_SCIPY_OPENBLAS", "1"),),
        ("-Wl,-rpath," + ":".join(rpaths),),
    )


SODIUM = library("libsodium", "sodium", "sodium.h")
BLAS_SOURCE = os.environ.get("CMLP_BLAS", "auto")
if BLAS_SOURCE == "auto":
    BLAS_SOURCE = "scipy-openblas32" if have_scipy_openblas32() else "system"
if BLAS_SOURCE == "scipy-openblas32":
    OPENBLAS = scipy_openblas32()
elif BLAS_SOURCE == "system":
    OPENBLAS = library(
        "openblas",
        "openblas",
        "cblas.h",
        (
            "/usr/include/x86_64-linux-gnu/openblas-pthread",
            "/usr/include/aarch64-linux-gnu/openblas-pthread",
            "/usr/include/openblas",
        ),
    )
else:
    sys.exit(f"cmlp: CMLP_BLAS={BLAS_SOURCE!r}: expected 'auto', 'system' or 'scipy-openblas32'")

# header -> what provides it, for the one-line hint when it is missing
HEADER_HINTS = {
    "sodium.h": "libsodium headers missing: sudo apt-get install libsodium-dev (Fedora: libsodium-devel)",
    "cblas.h": "CBLAS headers missing: pip install scipy-openblas32 "
    "(or sudo apt-get install libopenblas-dev)",
}

COVERAGE = os.environ.get("CMLP_COVERAGE") == "1"
DEBUG = os.environ.get("CMLP_DEBUG") == "1"

COMMON_CFLAGS = [
    "-O0" if DEBUG else "-O3",
    "-g",  # symbols for perf and gdb
    "-fno-omit-frame-pointer",  # usable call graphs in perf record -g
    "-fno-strict-aliasing",
    "-Wno-unused-function",
    "-Wno-unreachable-code",
]
if COVERAGE:
    # libFuzzer instrumentation is clang-only: compile and link with clang unless told
    os.environ.setdefault("CC", "clang")
    os.environ.setdefault("LDSHARED", os.environ["CC"] + " -shared")
    _sanitizers = [s for s in (os.environ.get("CMLP_SANITIZE", ""), "fuzzer-no-link") if s]
    COMMON_CFLAGS += ["-fsanitize=" + ",".join(_sanitizers)]

DEFINE_MACROS = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]


def numpy_include():
    import numpy

    return numpy.get_include()


NEEDED_HEADERS = {}


def ext(name, sources, libs=None, include_dirs=(), extra_compile_args=(), depends=()):
    include, libdirs, libnames, macros, link_args = [], [], [], [], []
    for lib in libs or ():
        include += lib.include
        libdirs += lib.libdirs
        libnames += lib.libs
        macros += lib.macros
        link_args += lib.link_args
    # checked before compiling, by name (cythonize hands build_ext copies of these objects)
    NEEDED_HEADERS[name] = tuple(lib.header for lib in libs or ())
    return Extension(
        name,
        sources=sources,
        include_dirs=["csrc", numpy_include(), *include, *include_dirs],
        library_dirs=libdirs,
        libraries=libnames,
        define_macros=DEFINE_MACROS + macros,
        extra_compile_args=COMMON_CFLAGS + list(extra_compile_args),
        extra_link_args=["-g", *link_args],
        depends=list(depends),  # headers: a change rebuilds the extension
    )


def header_found(header, include_dirs):
    """True when the C compiler finds ``#include <header>`` (its own search path + dirs)."""
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not shutil.which(cc[0]):
        return True  # no compiler: let the build report that itself
    cmd = [*cc, "-E", "-x", "c", "-", "-o", os.devnull, *(f"-I{d}" for d in include_dirs)]
    probe = subprocess.run(cmd, input=f"#include <{header}>\n", capture_output=True, text=True)
    return probe.returncode == 0


class CheckedBuildExt(build_ext):
    """build_ext that names the missing package instead of a compiler fatal error."""

    def run(self):
        for e in self.extensions:
            for header in NEEDED_HEADERS.get(e.name, ()):
                if not header_found(header, e.include_dirs):
                    sys.exit(f"cmlp: cannot build {e.name}: {HEADER_HINTS[header]}")
        super().run()


EXTENSIONS = [
    ext("cmlp._frame", ["pyx/_frame.pyx"]),
    ext("cmlp._record", ["pyx/_record.pyx"], libs=[SODIUM]),
    ext("cmlp._netio", ["pyx/_netio.pyx"]),
    # -Wno-psabi: the 64-byte vector helpers in gpt2_kernels.c are always
    # inlined, so GCC's note about the AVX-512 calling convention is moot.
    ext(
        "cmlp._gpt2",
        ["pyx/_gpt2.pyx", "csrc/gpt2_kernels.c"],
        libs=[OPENBLAS],
        extra_compile_args=["-std=gnu11", "-Wno-psabi"],
        depends=["csrc/gpt2_kernels.h", "csrc/vec16.h"],
    ),
    # llama/qwen2: own kernels plus gpt2_kernels.c's worker pool and F32 GEMV
    ext(
        "cmlp._llama",
        ["pyx/_llama.pyx", "csrc/llama_kernels.c", "csrc/gpt2_kernels.c"],
        libs=[OPENBLAS],
        extra_compile_args=["-std=gnu11", "-Wno-psabi"],
        depends=["csrc/llama_kernels.h", "csrc/gpt2_kernels.h", "csrc/vec16.h"],
    ),
    # the pool code is compiled in here too: _gpt2 passes its gpt2_pool* in,
    # and both copies come from the same source, so the struct is the same
    ext(
        "cmlp._wkernels",
        ["pyx/_wkernels.pyx", "csrc/wkernels.c", "csrc/gpt2_kernels.c"],
        libs=[OPENBLAS],
        extra_compile_args=["-std=gnu11", "-Wno-psabi"],
        depends=["csrc/wkernels.h", "csrc/wkernels_impl.h", "csrc/gpt2_kernels.h", "csrc/vec16.h"],
    ),
]

# CMLP_ONLY=_frame,_record builds a subset (fast iteration on one module)
_only = {n.strip() for n in os.environ.get("CMLP_ONLY", "").split(",") if n.strip()}
if _only:
    EXTENSIONS = [e for e in EXTENSIONS if e.name.split(".")[-1] in _only]

setup(
    cmdclass={"build_ext": CheckedBuildExt},
    ext_modules=cythonize(
        EXTENSIONS,
        include_path=["pyx"],
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
        quiet=True,
    ),
)
