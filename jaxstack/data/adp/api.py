"""API stubs: the argument specification of a dataset's ``ApiAction`` functions.

As in ADP's per-dataset ``api.py``, a stub is a Python function with a typed signature, a docstring
and no body. The signature *is* the argument spec: an ``ApiAction(function, kwargs)`` is valid for a
dataset when ``function`` names one of its stubs and ``kwargs`` bind to the stub's signature
(:meth:`inspect.Signature.bind`). The docstrings feed the tool descriptions that exporters prepend
to the first user message.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class ApiBindingError(ValueError):
    """An ``ApiAction`` whose function or keyword arguments do not match the dataset's stubs."""


@dataclass(frozen=True)
class ApiStubs:
    """A named set of stub functions, keyed by the wire name of each function.

    The wire name may differ from the Python name (Synatra's ``type`` action is written by a stub
    called ``type_text`` so that it does not shadow the builtin).
    """

    dataset: str
    functions: Mapping[str, Callable[..., Any]]

    @classmethod
    def from_functions(
        cls, dataset: str, functions: Iterable[Callable[..., Any]], **renamed: Callable[..., Any]
    ) -> ApiStubs:
        """Stubs named by their ``__name__``, plus ``wire_name=function`` pairs in ``renamed``."""
        table = {function.__name__: function for function in functions}
        table.update(renamed)
        return cls(dataset=dataset, functions=dict(sorted(table.items())))

    @property
    def names(self) -> list[str]:
        """The wire names of all stubs, sorted."""
        return sorted(self.functions)

    def __contains__(self, name: object) -> bool:
        return name in self.functions

    def signature(self, name: str) -> inspect.Signature:
        """The signature of stub ``name``."""
        return inspect.signature(self.functions[name])

    def parameter_names(self, name: str) -> list[str]:
        """The parameter names of stub ``name`` in declaration order."""
        return list(self.signature(name).parameters)

    def signature_text(self, name: str) -> str:
        """The signature as written in the stub's source, e.g. ``(path: str, line: int | None = None)``.

        Stub modules use postponed annotations, so the quotes of string annotations are removed.
        """
        return str(self.signature(name)).replace("'", "")

    def bind(self, name: str, kwargs: Mapping[str, Any]) -> inspect.BoundArguments:
        """Bind ``kwargs`` to stub ``name``; raise :class:`ApiBindingError` naming the problem."""
        if name not in self.functions:
            raise ApiBindingError(
                f"function {name!r} is not an API of dataset {self.dataset!r}; "
                f"expected one of {self.names}"
            )
        signature = self.signature(name)
        try:
            return signature.bind(**kwargs)
        except TypeError as error:
            raise ApiBindingError(
                f"kwargs of {name}{self.signature_text(name)} do not bind: {error} "
                f"(got {sorted(kwargs)})"
            ) from None

    def describe(self, names: Iterable[str] | None = None) -> str:
        """Python-style declarations with docstrings, for prompts: ``def f(x: str) -> None: ...``."""
        blocks = []
        for name in sorted(set(names) if names is not None else self.functions):
            function = self.functions[name]
            doc = inspect.getdoc(function) or ""
            body = "\n".join("    " + line if line else "" for line in doc.splitlines())
            blocks.append(f'def {name}{self.signature_text(name)}:\n    """\n{body}\n    """')
        return "\n\n".join(blocks)


def check_api_calls(items: Iterable[Any], stubs: ApiStubs | None) -> None:
    """Bind every ``ApiAction`` in ``items`` to ``stubs``; raise :class:`ApiBindingError` on the first
    mismatch (the message names the item index). ``stubs=None`` means the dataset has no API
    actions, so any ``ApiAction`` is an error."""
    from jaxstack.data.adp.schema import ApiAction

    for index, item in enumerate(items):
        if not isinstance(item, ApiAction):
            continue
        if stubs is None:
            raise ApiBindingError(
                f"content[{index}] is an api_action {item.function!r} but this dataset declares "
                "no API stubs"
            )
        try:
            stubs.bind(item.function, item.kwargs)
        except ApiBindingError as error:
            raise ApiBindingError(f"content[{index}].kwargs: {error}") from None
