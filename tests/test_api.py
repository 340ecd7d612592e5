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


def test_other_packages_import_a_public_name_from_its_package_not_its_module():
    """``from edgefl.ledger import Chain``, not ``from edgefl.ledger.chain import Chain``: the faces are the API
    between packages (imports placed inside functions, on purpose lazy, are left as they are)."""
    import ast
    from pathlib import Path

    root = Path(importlib.import_module("edgefl").__file__).parent
    faces = {p: set(importlib.import_module(f"edgefl.{p}").__all__) for p in PACKAGES}
    offences = []
    for path in sorted(root.rglob("*.py")):
        own = path.relative_to(root).parts[0]
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.count(".") == 2:
                _, pkg, _ = node.module.split(".")
                if node.module.startswith("edgefl.") and pkg != own and pkg in faces:
                    offences += [f"{path.relative_to(root)}: {node.module}.{a.name}" for a in node.names
                                 if a.name in faces[pkg]]
    assert not offences, offences
