"""Build edgefl: the pure-Python package plus optional Cython extensions from ext/.

Every extension is ``optional=True``: where no C compiler, Cython or library
headers are present the build skips it and edgefl runs on the pure-Python twin
of each compiled module (``edgefl/_pure``).
"""

import os
import shutil
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
VERSION = "0.1.0"


def _gmp():
    """Build arguments for GMP: the system libgmp (libgmp-dev) if its header is there, else gmpy2's copy.

    gmpy2's wheel ships gmp.h and a bundled libgmp; linking that copy by its
    path (with an rpath to it) keeps the extension working without libgmp-dev.
    Only with the system library does the arithmetic release the GIL: gmpy2
    installs its own allocator in the copy it bundles.
    """
    import sysconfig

    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for include in ("/usr/include", f"/usr/include/{multiarch}", "/usr/local/include"):
        if os.path.exists(os.path.join(include, "gmp.h")):
            return {"libraries": ["gmp"], "define_macros": [("EDGEFL_GMP_NOGIL", "1")]}
    try:
        import gmpy2
    except ImportError:
        return None
    package = Path(gmpy2.__file__).parent
    libs = sorted((package.parent / "gmpy2.libs").glob("libgmp*.so*"))
    if not (package / "gmp.h").exists() or not libs:
        return None
    return {"include_dirs": [str(package)], "extra_link_args": [str(libs[0])],
            "runtime_library_dirs": [str(libs[0].parent)]}


def _extensions():
    """Cython sources in ext/ become modules of edgefl._ext."""
    specs = [
        # name, sources, build arguments
        ("hashing", ["ext/hashing.pyx"], {"libraries": ["crypto"]}),  # OpenSSL libcrypto SHA-256
        ("cborscan", ["ext/cborscan.pyx"], {}),
        # bit-identical to its numpy twin only if no multiply-add is fused (aarch64 compilers fuse by default)
        ("noise", ["ext/noise.pyx"], {"extra_compile_args": ["-ffp-contract=off"]}),
    ]
    gmp = _gmp()
    if gmp is not None:  # without GMP headers the accumulator runs on its pure-Python twin
        specs.append(("accumulator", ["ext/accumulator.pyx"], gmp))
    compile_args = ["-O3", "-DOPENSSL_SUPPRESS_DEPRECATED"]
    exts = [
        Extension(
            f"edgefl._ext.{name}",
            sources,
            optional=True,
            **{**args, "extra_compile_args": compile_args + args.get("extra_compile_args", [])},
        )
        for name, sources, args in specs
    ]
    if os.environ.get("EDGEFL_NO_EXTENSIONS") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:  # no Cython: build from generated C if an sdist shipped it
        for ext in exts:
            ext.sources = [s.replace(".pyx", ".c") for s in ext.sources]
        return [e for e in exts if all((HERE / s).exists() for s in e.sources)]
    built = cythonize(
        exts,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
        quiet=True,
    )
    for ext in built:  # cythonize() builds new Extension objects and drops ``optional``
        ext.optional = True
    return built


class BuildPyWithData(build_py):
    """Ship broker/ templates, firmware_profiles/ and firstboot/ scripts inside the package as edgefl/_data."""

    def run(self):
        super().run()
        for folder in ("broker", "firmware_profiles", "firstboot"):
            target = Path(self.build_lib) / "edgefl" / "_data" / folder
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(HERE / folder, target)


setup(
    name="edgefl",
    version=VERSION,
    description="Asyncio edge runtime for blockchain-secured, hierarchical, "
    "privacy-preserving federated learning on Raspberry-Pi-class devices",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["edgefl", "edgefl.*"]),
    package_data={"edgefl": ["py.typed"]},  # typed: mypy checks code that imports edgefl against its hints
    ext_modules=_extensions(),
    cmdclass={"build_py": BuildPyWithData},
    install_requires=[
        "cbor2>=6.2,<7",
        "coincurve>=20",
        "cryptography>=42",  # X.509 certificates for the broker's mutual TLS
        "numpy>=1.24",
        "aiomqtt>=2.3,<3",
        "paho-mqtt>=2.0,<3",  # imported by the session (MQTT 5 properties), not only through aiomqtt 2
        "uvloop>=0.19; platform_system != 'Windows'",
        "gmpy2>=2.1",
    ],
    extras_require={
        # devices run an extractor backend; the cloud exports models (onnx, litert's flatbuffer schema)
        "ml": ["onnx>=1.14", "onnxruntime>=1.16", "ai-edge-litert>=1.2", "flatbuffers>=2.0"],
        "bench": ["matplotlib>=3.5"],
        "test": ["pytest>=8", "pytest-asyncio>=0.24", "pytest-timeout>=2.3", "hypothesis>=6.100", "Cython>=3.0",
                 "ruff>=0.6", "mypy>=1.10"],
        "fuzz": ["atheris>=2.3"],  # scripts/fuzz --atheris: coverage-guided (optional; hypothesis and a PRNG otherwise)
    },
    entry_points={"console_scripts": ["edgefl=edgefl.cli:main"]},
    zip_safe=False,
)
