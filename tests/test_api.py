"""The declared public API: every package names its faces in __all__, each resolves, none costs an import."""

import importlib
import pkgutil
import subprocess
import sys

import pytest

PACKAGES = ["runtime", "crypto", "transport", "ledger", "consensus", "ml", "fl", "nodes", "provision"]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_name_resolves_to_what_its_module_defines(name):
    pkg = importlib.import_module(f"edgefl.{name}")
    assert pkg.__all__ == sorted(pkg.__all__) and len(pkg.__all__) >= 3
    for face in pkg.__all__:
        value = getattr(pkg, face)
        assert value is not None and face in dir(pkg)
    with pytest.raises(AttributeError):
        _ = pkg.no_such_face
    modules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    assert not modules & set(pkg.__all__)  # `from edgefl.ml import export` must stay the module


def test_importing_a_package_imports_nothing_until_a_name_is_used():
    code = ("import sys, edgefl.fl, edgefl.ml, edgefl.ledger; "
            "assert not any(m in sys.modules for m in ('numpy', 'cbor2', 'gmpy2')), sorted(sys.modules); "
            "edgefl.fl.make; assert 'numpy' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_subpackages_still_import_beside_the_faces():
    from edgefl.crypto import accumulator

    assert callable(accumulator.update)
