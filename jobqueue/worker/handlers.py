"""Python job handlers registered in a worker.

A job names a handler as ``module:function``. Only handlers registered in the worker can
be called: a job cannot import arbitrary code by naming it. Handlers are registered in
code (``registry.register(function)``) or by name on the worker's command line
(``--handler package.module:function``), which imports them at start-up so a typo fails
the worker at once instead of every job later.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from jobqueue.errors import InvalidInputError

Handler = Callable[..., Any]


def handler_name(function: Handler) -> str:
    return f"{function.__module__}:{function.__qualname__}"


class HandlerRegistry:
    def __init__(self, handlers: Iterable[Handler] = ()) -> None:
        self._handlers: dict[str, Handler] = {}
        for function in handlers:
            self.register(function)

    def register(self, function: Handler, *, name: str | None = None) -> Handler:
        """Register ``function`` (usable as a decorator) under ``module:qualname``."""
        self._handlers[name or handler_name(function)] = function
        return function

    def import_and_register(self, name: str) -> Handler:
        """Import ``module:function`` and register it; a clear error if that fails."""
        module_name, _, attribute = name.partition(":")
        if not module_name or not attribute:
            raise InvalidInputError(f"handler {name!r} must be written module:function")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise InvalidInputError(f"handler {name!r}: cannot import {module_name}") from error
        function = getattr(module, attribute, None)
        if not callable(function):
            raise InvalidInputError(f"handler {name!r}: {module_name} has no function {attribute}")
        return self.register(function, name=name)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def get(self, name: str) -> Handler:
        try:
            return self._handlers[name]
        except KeyError:
            raise InvalidInputError(
                f"handler {name!r} is not registered in this worker; "
                f"registered: {', '.join(self.names()) or 'none'}"
            ) from None

    async def call(self, function: Handler, arguments: dict[str, Any]) -> Any:
        """Await an async handler; run a plain one in a thread so the loop stays free."""
        if inspect.iscoroutinefunction(function):
            return await function(**arguments)
        return await asyncio.to_thread(function, **arguments)
