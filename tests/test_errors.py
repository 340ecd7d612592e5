"""One error hierarchy: every exception edgefl defines is an EdgeflError with a stable reason label."""

import importlib
import inspect
import pkgutil

import pytest

import edgefl
from edgefl.errors import EdgeflError


def edgefl_modules():
    for info in pkgutil.walk_packages(edgefl.__path__, "edgefl."):
        if info.name.startswith(("edgefl._ext", "edgefl.bench")) or info.name.endswith("__main__"):
            continue
        try:
            yield importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed here
            continue


def defined_errors():
    seen = {}
    for mod in edgefl_modules():
        for name, obj in vars(mod).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == mod.__name__
                    and not name.startswith("_")):  # private control-flow signals never leave their module
                seen[f"{mod.__name__}.{name}"] = obj
    return seen


def test_every_error_edgefl_defines_is_an_edgefl_error_with_a_reason():
    errors = defined_errors()
    assert len(errors) > 30  # the walk found the package's errors
    outside = sorted(name for name, cls in errors.items() if not issubclass(cls, EdgeflError))
    assert outside == []
    for name, cls in errors.items():
        assert isinstance(cls.reason, str) and cls.reason, name


def test_no_two_errors_share_a_name():
    names = [name.rsplit(".", 1)[1] for name in defined_errors()]
    assert sorted({n for n in names if names.count(n) > 1}) == []


@pytest.mark.parametrize("make", [
    lambda: __import__("edgefl.codec", fromlist=["x"]).decode(b"\xff"),
    lambda: __import__("edgefl.fl.attacks", fromlist=["x"]).make("no-such-attack"),
    lambda: __import__("edgefl.fl.aggregate", fromlist=["x"]).make("no-such-aggregator"),
    lambda: __import__("edgefl.crypto.vrf", fromlist=["x"]).decode_proof(b"short"),
])
def test_bad_input_raises_one_of_ours_and_still_a_value_error(make):
    with pytest.raises(EdgeflError) as err:
        make()
    assert isinstance(err.value, ValueError) and err.value.reason


def test_a_remote_error_carries_a_reason_like_the_rest():
    from edgefl.transport.session import RemoteError

    exc = RemoteError("not_anchored", "no anchor yet")
    assert exc.reason == "not_anchored" and "no anchor yet" in str(exc) and isinstance(exc, EdgeflError)
