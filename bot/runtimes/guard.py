"""The runtimes' one rule for the unforeseen: whatever goes wrong inside a runtime is an infrastructure
error (exit 3), in one line, never a traceback and never blamed on the change — the change's own faults
are outcomes (`ForkOutcome`, `BuildOutcome`), not raises."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from bot.config import InfrastructureError, LoopgateError

_P = ParamSpec("_P")
_T = TypeVar("_T")


def infrastructure_errors(runtime: str) -> Callable[[Callable[_P, _T]], Callable[_P, _T]]:
    """A decorator for `runtime`'s methods (`local runtime`, `kubernetes runtime`)."""

    def decorate(method: Callable[_P, _T]) -> Callable[_P, _T]:
        @functools.wraps(method)
        def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            try:
                return method(*args, **kwargs)
            except LoopgateError:
                raise
            except Exception as exc:
                cause = " ".join(str(exc).split())[:500]
                raise InfrastructureError(
                    f"{runtime}: {method.__name__} failed: {type(exc).__name__}: {cause}"
                ) from exc

        return guarded

    return decorate
