"""The stubs: mypy --strict accepts an example of the API's use (skipped when mypy is not
installed; scripts/test installs it), and they name every parameter as the runtime does."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def test_mypy_strict_accepts_the_typed_example() -> None:
    pytest.importorskip("mypy")
    example = Path(__file__).with_name("typed_example.py")
    result = subprocess.run(
        # The cache lives in the virtualenv (beside the build): warm runs take a second.
        [sys.executable, "-m", "mypy", "--strict", f"--cache-dir={Path(sys.prefix) / 'mypy-cache'}", str(example)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


STUBS = Path(__file__).parents[1] / "python" / "stormwall" / "_stormwall.pyi"

# A valid value for every keyword the stubs document, to call each one alone.
EXAMPLES: dict[str, Any] = {
    "max_retries": 2, "backoff": "linear", "max_delay": 5.0, "jitter": "full",
    "handle": ValueError, "retry_after": True, "delay_generator": lambda exc, attempt: None,
    "failure_ratio": 0.5, "minimum_throughput": 5, "sampling_duration": 10,
    "sampling_window": {"count": 200}, "consecutive_failures": 3,
    "slow_call": {"duration_threshold": 1, "ratio": 0.5}, "break_duration": 5,
    "permitted_calls_in_half_open": 2, "success_threshold": 1,
    "max_concurrency": 4, "queue_limit": 2, "queue_timeout": 1, "keyed": True, "max_keys": 10,
    "permits": 10, "period": 1, "burst": 5, "algorithm": "token_bucket",
    "max_hedged_attempts": 2, "value": 1, "handler": lambda exc: 1,
    "name": "checked", "on_event": print, "log_events": True,
}


def stub_functions() -> dict[str, ast.FunctionDef]:
    """`Class.method` (and module-level functions) -> its stub definition."""
    tree = ast.parse(STUBS.read_text())
    found: dict[str, ast.FunctionDef] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not any(
                    isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list
                ):
                    found[f"{node.name}.{item.name}"] = item
        elif isinstance(node, ast.FunctionDef):
            found[node.name] = node
    return found


def stub_parameters(fn: ast.FunctionDef) -> list[tuple[str, inspect._ParameterKind]]:
    P = inspect.Parameter
    args = fn.args
    params = [(a.arg, P.POSITIONAL_ONLY) for a in args.posonlyargs]
    params += [(a.arg, P.POSITIONAL_OR_KEYWORD) for a in args.args]
    if args.vararg:
        params.append((args.vararg.arg, P.VAR_POSITIONAL))
    params += [(a.arg, P.KEYWORD_ONLY) for a in args.kwonlyargs]
    if args.kwarg:
        params.append((args.kwarg.arg, P.VAR_KEYWORD))
    is_static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    if params and not is_static and params[0][0] == "self":
        params = params[1:]
    return params


def runtime_parameters(obj: Any) -> list[tuple[str, inspect._ParameterKind]]:
    params = [(p.name, p.kind) for p in inspect.signature(obj).parameters.values()]
    if params and params[0][0] == "self":
        params = params[1:]
    return params


def test_the_stubs_name_every_parameter_as_the_runtime_does() -> None:
    # Positional parameters must match in name and kind (a stub naming `fn` what the runtime
    # calls `func` makes keyword calls fail that mypy accepts); keyword-only ones must exist
    # at run time, or be taken by its `**options` (then they are called below).
    from stormwall import _stormwall

    P = inspect.Parameter
    mismatches = []
    checked = 0
    for qualname, fn in stub_functions().items():
        owner_name, _, method = qualname.rpartition(".")
        owner = getattr(_stormwall, owner_name) if owner_name else _stormwall
        runtime = owner if method == "__init__" else getattr(owner, method or qualname)
        stub = stub_parameters(fn)
        actual = runtime_parameters(runtime)
        has_options = any(kind == P.VAR_KEYWORD for _, kind in actual)
        positional = [p for p in stub if p[1] != P.KEYWORD_ONLY]
        runtime_positional = [
            p for p in actual if p[1] != P.KEYWORD_ONLY and not (has_options and p[1] == P.VAR_KEYWORD)
        ]
        if positional != runtime_positional and not (
            # A stub may spell `**kwargs` out as keyword-only parameters.
            has_options and positional == runtime_positional + [p for p in actual if p[1] == P.VAR_KEYWORD]
        ):
            mismatches.append(f"{qualname}: stub {positional} != runtime {runtime_positional}")
        runtime_keywords = {name for name, kind in actual if kind == P.KEYWORD_ONLY}
        for name, kind in stub:
            if kind == P.KEYWORD_ONLY and name not in runtime_keywords and not has_options:
                mismatches.append(f"{qualname}: keyword {name} unknown at run time")
        checked += 1
    assert not mismatches, "\n".join(mismatches)
    assert checked >= 25


def test_every_keyword_the_stubs_document_is_accepted() -> None:
    import stormwall

    functions = stub_functions()
    calls = 0
    for qualname in ["PipelineBuilder.retry", "PipelineBuilder.circuit_breaker", "PipelineBuilder.bulkhead",
                     "PipelineBuilder.rate_limit", "PipelineBuilder.hedging", "PipelineBuilder.fallback",
                     "CircuitBreaker.__init__", "Pipeline.from_spec"]:
        for arg in functions[qualname].args.kwonlyargs:
            keyword = arg.arg
            value = 0.1 if keyword == "delay" else EXAMPLES[keyword]
            kwargs = {keyword: value}
            owner, _, method = qualname.partition(".")
            if owner == "PipelineBuilder":
                if method == "fallback" and keyword == "handle":
                    kwargs["value"] = 1
                getattr(stormwall.Pipeline.builder(), method)(**kwargs).build()
            elif owner == "CircuitBreaker":
                stormwall.CircuitBreaker(**kwargs)
            else:
                stormwall.Pipeline.from_spec({"strategies": []}, **kwargs)
            calls += 1
    # The shared breaker's own keywords, and its breaker options (an unparsable URL fails
    # after the options were read: `ConfigError.field == "url"`, not the keyword).
    for arg in functions["CircuitBreaker.redis"].args.kwonlyargs:
        keyword = arg.arg
        if keyword == "name":
            continue
        value = {"key_prefix": "p:", "require_connection": False}.get(keyword, EXAMPLES.get(keyword))
        try:
            stormwall.CircuitBreaker.redis("not a url", name="checked", **{keyword: value})
        except stormwall.ConfigError as e:
            assert e.field == "url", (keyword, e)
        calls += 1
    assert calls >= 40
    # ...and an undocumented keyword is refused, naming it (so the calls above prove something).
    with pytest.raises(stormwall.ConfigError) as caught:
        stormwall.Pipeline.builder().retry(max_retry=2)
    assert caught.value.field == "retry.max_retry"
