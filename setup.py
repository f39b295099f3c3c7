"""Build the Cython core; all metadata lives in pyproject.toml."""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

CHARLS = Path("src/pacs_engine/_native/charls")

extensions = [
    Extension(
        "pacs_engine._native.scanner",
        ["src/pacs_engine/_native/scanner.pyx"],
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
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
