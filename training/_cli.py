"""A command line generated from a settings dataclass: one flag per field, its docstring as the help."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

__all__ = ["dataclass_parser", "field_docs"]


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass and its dataclass bases (a subclass's wins)."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
        for node, following in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _declaration_order(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls``: those its own body declares first, then those it inherits."""
    own = list(inspect.get_annotations(cls))
    specs = {f.name: f for f in dataclasses.fields(cls)}
    return [specs[name] for name in own if name in specs] + [f for f in specs.values() if f.name not in own]


def _optional(convert: Any) -> Any:
    """An argparse type that also accepts ``none``."""

    def parse(text: str) -> Any:
        return None if text.lower() == "none" else convert(text)

    parse.__name__ = convert.__name__
    return parse


def dataclass_parser(
    cls: type,
    *,
    prog: str,
    description: str,
    groups: Mapping[str, str],
    required: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """One ``--flag-name`` per field of ``cls`` with the field's docstring as help and its default shown.

    The fields ``cls`` declares come first, then those it inherits from a dataclass base. A bool field is
    ``--x/--no-x``, a tuple field a repeatable ``--x FILE``, a Literal field a choice, an ``X | None``
    field also accepts ``none``. ``groups`` opens a help section at the named field; ``required`` fields
    have no default.
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    group: Any = parser
    for spec in _declaration_order(cls):
        if spec.name in groups:
            group = parser.add_argument_group(groups[spec.name])
        flag = "--" + spec.name.replace("_", "-")
        help_text = docs[spec.name].replace("%", "%%")
        hint = hints[spec.name]
        args: dict[str, Any] = {"dest": spec.name, "default": spec.default}
        origin, members = typing.get_origin(hint), typing.get_args(hint)
        if spec.name in required:
            args.update(required=True, metavar=spec.name.upper())
        elif hint is bool:
            args["action"] = argparse.BooleanOptionalAction
        elif origin is tuple:
            args.update(action="append", default=None, metavar="FILE")
        elif origin is Literal:
            args["choices"] = list(members)
        elif origin in (types.UnionType, typing.Union):  # X | None
            (inner,) = (m for m in members if m is not type(None))
            args["type"] = _optional(inner)
        else:
            args["type"] = hint
        if spec.default not in ("", ()) and spec.name not in required and "default:" not in help_text:
            help_text += f" (default: {'none' if spec.default is None else spec.default})"
        group.add_argument(flag, help=help_text, **args)
    return parser
