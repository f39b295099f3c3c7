"""Build the Cython core; all metadata lives in pyproject.toml."""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

CHARLS = Path("src/pacs_engine/_native/charls")

# The header scanner: one extension per section that has Python-facing or per-file
# code; each cimports the others' .pxd. dicom.pxd (constants, byte readers) and
# window.pxd (the I/O windows) are all inline, compiled into the modules that use them.
SCANNER_MODULES = ("values", "parse", "scanner")

extensions = [
    *(
        Extension(
            f"pacs_engine._native.{name}",
            [f"src/pacs_engine/_native/{name}.pyx"],
            extra_compile_args=["-O3"],
        )
        for name in SCANNER_MODULES
    ),
    # The element walk of the byte-level de-identification (pacs_engine.deid.bytelevel).
    Extension(
        "pacs_engine._native.deidwalk",
        ["src/pacs_engine/_native/deidwalk.pyx"],
        extra_compile_args=["-O3"],
    ),
    # The vendored CharLS, built without its assertions (-DNDEBUG): ~40 % faster encodes.
    Extension(
        "pacs_engine._native.jpegls",
        ["src/pacs_engine/_native/jpegls.pyx", *map(str, sorted(CHARLS.glob("src/*.cpp")))],
        language="c++",
        include_dirs=[str(CHARLS / "include"), str(CHARLS / "src")],
        define_macros=[("CHARLS_STATIC", "1"), ("NDEBUG", "1")],
        extra_compile_args=["-O3", "-std=c++17"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        include_path=["src"],
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
