"""Mapping YAML sections onto dataclasses, strictly.

A misspelt key in a config must be an error that names it, not a setting
that is silently ignored while the run uses a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import string
import types
import typing
from dataclasses import fields
from typing import Any, Callable, Literal, Sequence, TypeVar, Union

import yaml

from .errors import MedAdaptError

T = TypeVar("T")


class _ConfigLoader(yaml.SafeLoader):
    """YAML as configs mean it, as YAML 1.2 reads it: only ``true`` and ``false`` are booleans (YAML 1.1 also
    reads ``yes``, ``no``, ``on`` and ``off`` as booleans, so ``amp: off`` would reach a text setting as false);
    numbers are decimal, and a number written with a leading zero is text (YAML 1.1 reads ``010`` as octal 8
    and ``1:30`` as 90, so case ids ``[001, 008]`` became ``[1, '008']``); dates stay text.
    A key written twice in one mapping is an error (YAML keeps the last and drops the first silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"found {key!r} a second time (first on line {seen[key] + 1}): write each key once",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_BOOL, _INT, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT, "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ConfigLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_ConfigLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))
_ConfigLoader.add_implicit_resolver(_FLOAT, re.compile(
    r"^(?:[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+.0123456789"))

class _ConfigDumper(yaml.SafeDumper):
    """Writes configs that read back as written, by :func:`load_yaml` and by YAML 1.1 readers alike: a text that
    either would read as a number or a boolean (``'1e3'``, ``'010'``, ``'yes'``) is quoted."""


_ConfigDumper.yaml_implicit_resolvers = {
    first: list(_ConfigLoader.yaml_implicit_resolvers.get(first, [])) + list(yaml.SafeDumper.yaml_implicit_resolvers.get(first, []))
    for first in set(_ConfigLoader.yaml_implicit_resolvers) | set(yaml.SafeDumper.yaml_implicit_resolvers)}


def dump_yaml(data: Any) -> str:
    """A config as YAML text that :func:`load_yaml` reads back unchanged (keys in their order)."""
    return yaml.dump(data, Dumper=_ConfigDumper, sort_keys=False)


#: the YAML 1.1 booleans that :func:`load_yaml` leaves as text, read as booleans where a setting is one
_WORDS = {"yes": True, "on": True, "no": False, "off": False}


def load_yaml(text: str) -> Any:
    """Parse a config or an override value (safe: no Python objects). ``yes``/``no``/``on``/``off`` stay text,
    so a text setting keeps them as written; a true-or-false setting still accepts them (see
    :func:`build_dataclass`). Raises ``yaml.YAMLError`` on invalid YAML."""
    return yaml.load(text, Loader=_ConfigLoader)

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 80, 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a line: a YAML alias bomb (lists of lists of aliases) must not be spelled out in full."""
    return _REPR.repr(value)


def build_dataclass(cls: type[T], data: dict[str, Any], where: str) -> T:
    """``cls(**data)``, refusing keys ``cls`` does not have and values of the wrong type (named in the error).

    Each value is checked against its field's annotation (``int``, ``float``,
    ``bool``, ``str``, ``Literal``, lists, tuples, unions, nested config
    dataclasses given as mappings): ``epochs: "ten"``, ``epochs: 1.5`` or
    ``lr: fast`` is a one-line error naming the key, the value and what is
    allowed. A number written the way YAML reads as text (``3e-4``) is
    accepted where a float is expected, and ``yes``/``no``/``on``/``off``
    where a boolean is. Ranges are checked by each config.
    """
    if not isinstance(data, dict):
        raise MedAdaptError(f"'{where}' must be a mapping of keys to values (a YAML section); got {short_repr(data)}")
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed, key=str)
    if unknown:
        raise MedAdaptError(f"unknown key(s) {unknown} in '{where}' config; allowed: {sorted(allowed)}")
    hints = _hints(cls)
    data = dict(data)
    for key, value in data.items():
        if key in hints:
            data[key] = _checked(value, hints[key], f"{where}.{key}" if where != "config" else key)
    return cls(**data)


def check_fields(obj: Any, where: str) -> None:
    """Check every field of a config dataclass instance against its annotation, as :func:`build_dataclass`
    does for YAML, so a config built in Python (``SSLConfig(threshold="high")``) fails the same way.

    Numeric text where a float is wanted becomes that float, in place.
    """
    hints = _hints(type(obj))
    for f in fields(obj):
        if f.name in hints:
            setattr(obj, f.name, _checked(getattr(obj, f.name), hints[f.name], f"{where}.{f.name}"))


#: ``key -> (check, what is allowed)``: the ranges of a config section that its types alone do not say
Ranges = dict[str, tuple[Callable[[Any], bool], str]]


def check_ranges(obj: Any, where: str, ranges: Ranges) -> None:
    """``check(value)`` must hold for each ``key`` of ``ranges``, and a number must be finite (``.nan`` and
    ``.inf`` are YAML numbers); otherwise one line naming the key, the value and what is allowed."""
    for key, (ok, allowed) in ranges.items():
        value = getattr(obj, key)
        try:
            fine = bool(ok(value)) and not (isinstance(value, float) and not math.isfinite(value))
        except TypeError:
            fine = False
        if not fine:
            raise MedAdaptError(f"{where}.{key}: {short_repr(value)} is out of range; allowed: {allowed}")


def _hints(cls: type) -> dict[str, Any]:
    """The field annotations of ``cls`` and its bases, each resolved in the module that wrote it."""
    return typing.get_type_hints(cls)


def _checked(value: Any, hint: Any, key: str) -> Any:
    """``value`` if it fits ``hint`` (a numeric string becomes a float where a float is wanted, also as an item
    of a list or a member of a union), else an error."""
    value = _numbers_from_text(value, hint)
    if isinstance(value, str) and value.lower() in _WORDS and not _fits(value, hint) and _fits(True, hint):
        return _WORDS[value.lower()]  # `yes`/`no`/`on`/`off` where a boolean is wanted
    if not _fits(value, hint):
        quote = ""
        if isinstance(value, (bool, int, float)) and _fits("text", hint):  # YAML read a word or number
            kind = "true or false" if isinstance(value, bool) else "a number"
            quote = f"; YAML reads it as {kind}: put the value in quotes, as written, for the text"
        raise MedAdaptError(f"{key}: {short_repr(value)} is not {_describe(hint)}{quote}")
    return value


def _numbers_from_text(value: Any, hint: Any) -> Any:
    """``value`` with each text that YAML left unread as a number (``3e-4``: YAML 1.1 wants a dot) turned into a
    float where ``hint`` wants a float there; anything else unchanged."""
    if _fits(value, hint):
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(value, str) and hint is float:
        try:
            return float(value)
        except ValueError:
            return value
    if origin in (Union, types.UnionType):
        for a in args:
            converted = _numbers_from_text(value, a)
            if converted is not value and _fits(converted, a):
                return converted
        return value
    if isinstance(value, (list, tuple)) and (origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple)):
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return value
            items = list(args)
        else:
            items = [args[0] if args else Any] * len(value)
        return type(value)(_numbers_from_text(v, a) for v, a in zip(value, items))
    return value


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return True
    if hint is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (hint, dict))
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        item = args[0] if args else Any
        return all(_fits(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a text",
             type(None): "null", dict: "a mapping"}
    if hint in names:
        return names[hint]
    if origin is dict:
        return "a mapping"
    if origin is tuple and args and args[-1] is not Ellipsis:
        items = {_describe(a) for a in args}
        each = items.pop() if len(items) == 1 else " / ".join(_describe(a) for a in args)
        return f"a list of {len(args)} items, each {each}"
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        return f"a list of ({_describe(args[0])})" if args and args[-1] is not Ellipsis and origin is not tuple \
            else "a list"
    if dataclasses.is_dataclass(hint):
        return "a mapping of its keys"
    return getattr(hint, "__name__", str(hint))


def check_templates(templates: str | Sequence[str], where: str) -> tuple[str, ...]:
    """Sentence templates as a tuple; each must hold exactly one ``{}`` where the text goes."""
    out = (templates,) if isinstance(templates, str) else tuple(templates)

    def one_slot(t: Any) -> bool:  # exactly one empty field; any other brace would fail or hide the text
        if not isinstance(t, str):
            return False
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        except ValueError:
            return False
        return fields == [""]

    if not out or not all(one_slot(t) for t in out):
        raise MedAdaptError(
            f"{where} must be strings with exactly one '{{}}' where the text goes, e.g. 'the {{}}'; "
            f"got {short_repr(list(out))}"
        )
    return out


def check_phrase_map(mapping: Any, where: str, example: str) -> dict[str, list[str]]:
    """A dict from a name to a list of other phrasings (synonyms, aliases), as plain lists."""
    if not isinstance(mapping, dict) or any(
        not isinstance(v, (list, tuple)) or not all(isinstance(a, str) and a.strip() for a in v)
        for v in mapping.values()
    ):
        raise MedAdaptError(f"{where} must map a name to a list of other names (phrasings), e.g. {example}")
    return {str(k): list(v) for k, v in mapping.items()}


__all__ = [
    "Ranges", "build_dataclass", "check_fields", "check_phrase_map", "check_ranges", "check_templates", "short_repr",
]
