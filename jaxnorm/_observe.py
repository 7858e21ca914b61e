"""Observing the calls of given objects without changing them: what :func:`jaxnorm.activations.activation_stats`
needs from an NNX model.

Linen has method interceptors (``nn.intercept_methods``); NNX (0.12.5 to 0.12.8) has none. ``nnx.capture(...,
method_outputs=...)`` exists from 0.12.8 only and works by replacing the methods of the module *classes* while it
runs, and ``Module.sow`` records only what a module's own code sows. So the calls are observed instead: a profile
function of the current thread (``sys.setprofile``) sees each ``__call__`` of the given objects return, with its
value. Nothing is replaced or assigned, neither on a class nor on an object; other threads are not affected, and a
Python profile function already installed keeps receiving every event (a C-level profiler such as cProfile, which
``sys.setprofile`` cannot hand back, makes it an error instead).

Example:
  >>> class Double:
  ...     def __call__(self, x):
  ...         return 2 * x
  >>> double, seen = Double(), []
  >>> with observe_returns("example", {id(double): double}, lambda obj, value: seen.append(value)):
  ...     _ = double(double(3))
  >>> seen
  [6, 12]

References:
  Python's profiling hooks, https://docs.python.org/3/library/sys.html#sys.setprofile
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from types import CodeType, FrameType
from typing import Any, Literal

# record(obj, value): one observed call of ``obj`` returned ``value``
Record = Callable[[Any, Any], None]
Event = Literal["call", "return", "c_call", "c_return", "c_exception"]  # what a profile function is told


def _call_codes(cls: type) -> set[CodeType]:
    """The code of every ``__call__`` along ``cls``'s MRO (``super().__call__`` reaches a base's), unwrapped
    through decorators that keep ``__wrapped__``."""
    codes = set()
    for base in cls.__mro__:
        function = vars(base).get("__call__")
        for candidate in (function, inspect.unwrap(function) if callable(function) else None):
            code = getattr(candidate, "__code__", None)
            if isinstance(code, CodeType):
                codes.add(code)
    return codes


def _receiver(frame: FrameType) -> Any:
    """The first argument of the call running in ``frame`` (``self`` of a method), or None."""
    code = frame.f_code
    return frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None


@contextlib.contextmanager
def observe_returns(name: str, objects: Mapping[int, Any], record: Record) -> Iterator[None]:
    """While active, ``record(obj, value)`` each time a ``__call__`` of one of ``objects`` (by ``id``) returns in
    this thread, in the order the calls return (inner calls first). A call made inside another call of the same
    object (``super().__call__``) is recorded once, as the outer call. A call that raises records ``None``.

    Raises:
      RuntimeError (naming the public function ``name``): a C-level profiler is active in this thread.
    """
    previous = sys.getprofile()
    if previous is not None and not callable(previous):
        raise RuntimeError(f"{name}: expected no C-level profiler (such as cProfile) in this thread, got "
                           f"{type(previous).__name__}: module calls are observed with sys.setprofile, which would "
                           "end its profiling")
    codes = set().union(*(_call_codes(type(obj)) for obj in objects.values()))
    open_calls: dict[FrameType, int] = {}  # the frame of each recorded call in progress -> the object's id

    def profile(frame: FrameType, event: Event, arg: Any) -> None:
        if event == "call" and frame.f_code in codes:
            key = id(_receiver(frame))
            if key in objects and key not in open_calls.values():
                open_calls[frame] = key
        elif event == "return" and frame in open_calls:
            record(objects[open_calls.pop(frame)], arg)
        if previous is not None:
            previous(frame, event, arg)

    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(previous)
