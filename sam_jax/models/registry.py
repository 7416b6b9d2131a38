"""One registry shape for everything a config names by string: models, losses, mixings, optimizers.

A :class:`Registry` maps a name to its entry: the registered value (a model constructor, a loss, a
mixing objective, an optimizer spec), its hyper-parameters with their defaults (the config block
``<kind>.<name>``), and the rules those must satisfy, declared in the same ``register`` call: a
:class:`Rule` per field and, for rules that tie fields together, a ``check`` of the whole block::

    LOSSES = Registry("loss")
    LOSSES.register("focal", focal, defaults={"gamma": 3.0}, rules={"gamma": NON_NEGATIVE})
    LOSSES.lookup("focal")                   # the value; ValueError listing the names otherwise
    LOSSES.defaults("focal")                 # {"gamma": 3.0}
    LOSSES.validate("focal", {"gamma": -1})  # unknown fields, then the entry's rules

It reads as a mapping from name to value (``name in LOSSES``, ``sorted(LOSSES)``, ``LOSSES[name]``),
so that code and tests that treated the registries as dicts keep working. It lives in
``sam_jax.models``, the lowest layer that registers anything; ``sam_jax.losses`` and
``sam_jax.optim`` import it from here.
"""

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")
Hparams = Mapping[str, Any]
Check = Callable[[Hparams], None]


class Rule(NamedTuple):
    """What one hyper-parameter must be: ``holds(value)``, said in words as ``must be <requirement>``."""

    holds: Callable[[Any], bool]
    requirement: str


def _is_number(value: Any) -> bool:
    """A real number: a Python or NumPy scalar, or a concrete 0-d array; not a bool or a string."""
    if isinstance(value, (bool, str, bytes)):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


NON_NEGATIVE = Rule(lambda v: _is_number(v) and v >= 0, ">= 0")
POSITIVE = Rule(lambda v: _is_number(v) and v > 0, "> 0")
UNIT_INTERVAL = Rule(lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)")
FINITE_NON_NEGATIVE = Rule(lambda v: _is_number(v) and math.isfinite(v) and v >= 0, "finite and >= 0")
POSITIVE_INTEGER = Rule(lambda v: isinstance(v, numbers.Integral) and v > 0, "a positive integer")
NON_NEGATIVE_INTEGER = Rule(lambda v: isinstance(v, numbers.Integral) and v >= 0, "an integer >= 0")


def broken_rules(rules: Mapping[str, Rule], values: Hparams) -> list[str]:
    """``"<field> must be <requirement>"`` for every value of ``values`` that breaks its rule."""
    return [
        f"{field} must be {rules[field].requirement}"
        for field, value in values.items()
        if field in rules and not rules[field].holds(value)
    ]


def no_check(hparams: Hparams) -> None:
    """The rules of an entry that declares none."""
    del hparams


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name.

    Attributes:
      value: what the name stands for.
      defaults: hyper-parameter name -> default value.
      rules: hyper-parameter name -> the :class:`Rule` its value must follow.
      check: raises ``ValueError("<field>...")`` for what the per-field rules cannot say (fields
        that constrain each other); given the block as passed, complete or partial.
    """

    value: T
    defaults: Mapping[str, Any]
    rules: Mapping[str, Rule] = dataclasses.field(default_factory=dict)
    check: Check = no_check


def _check_types(name: str, defaults: Hparams, hparams: Hparams) -> None:
    """A bool where the default is a bool, a number (not a bool) where it is a number."""
    for field, value in hparams.items():
        default = defaults[field]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ValueError(f"{name}.{field}={value!r} must be True or False.")
        if (
            isinstance(default, numbers.Number)
            and not isinstance(default, bool)
            and (not isinstance(value, numbers.Number) or isinstance(value, bool))
        ):
            raise ValueError(f"{name}.{field}={value!r} must be a number.")


class Registry(MutableMapping[str, T], Generic[T]):
    """Names of one kind (``"loss"``, ``"optimizer"``, ...) with their values, defaults and rules.

    Args:
      kind: the word used in errors (``Unknown loss 'hinge'; choose one of [...]``).
      unknown_field: the error for a field an entry does not have, formatted with ``name``,
        ``field`` and ``known`` (the entry's fields, sorted).
      broken_rule: the error for a value that breaks its rule, formatted with ``name``, ``field``,
        ``value`` and ``requirement``.
      typed: whether :meth:`validate` also requires a bool where the default is a bool and a number
        where it is a number, before the entry's rules.
    """

    def __init__(
        self,
        kind: str,
        *,
        unknown_field: str = "{name}: unknown hyper-parameter {field!r}; {name} takes {known}.",
        broken_rule: str = "{name}: hyper-parameter {field}={value!r} is invalid; {field} must be {requirement}.",
        typed: bool = False,
    ):
        self.kind = kind
        self._unknown_field = unknown_field
        self._broken_rule = broken_rule
        self._typed = typed
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self,
        name: str,
        value: T,
        *,
        defaults: Hparams | None = None,
        rules: Mapping[str, Rule] | None = None,
        check: Check = no_check,
    ) -> T:
        """Adds ``name`` (once) with its hyper-parameter ``defaults``, their ``rules`` and a ``check``.

        Returns:
          ``value``, so that ``register`` can wrap a definition.

        Raises:
          ValueError: ``name`` is registered already.
        """
        if name in self._entries:
            raise ValueError(f"{self.kind.capitalize()} {name!r} is registered already.")
        self._entries[name] = Entry(value, dict(defaults or {}), dict(rules or {}), check)
        return value

    def entry(self, name: str) -> Entry[T]:
        """The entry of ``name``.

        Raises:
          ValueError: for an unknown name, listing the registered ones.
        """
        if name not in self._entries:
            raise ValueError(f"Unknown {self.kind} {name!r}; choose one of {sorted(self._entries)}.")
        return self._entries[name]

    def lookup(self, name: str) -> T:
        """The value registered under ``name``; ``ValueError`` listing the names otherwise."""
        return self.entry(name).value

    def defaults(self, name: str) -> dict[str, Any]:
        """The hyper-parameters of ``name`` with their defaults (a fresh dict)."""
        return dict(self.entry(name).defaults)

    def validate(self, name: str, hparams: Hparams) -> None:
        """Checks a block of ``name``: no unknown field, the types of the defaults when ``typed``, its rules.

        Raises:
          ValueError: naming the field (the entry's rules say what it must be).
        """
        entry = self.entry(name)
        for field in hparams:
            if field not in entry.defaults:
                known = sorted(entry.defaults) or "none"
                raise ValueError(self._unknown_field.format(name=name, field=field, known=known))
        if self._typed:
            _check_types(name, entry.defaults, hparams)
        for field, value in hparams.items():
            rule = entry.rules.get(field)
            if rule is not None and not rule.holds(value):
                message = self._broken_rule.format(name=name, field=field, value=value, requirement=rule.requirement)
                raise ValueError(message)
        entry.check(hparams)

    def __getitem__(self, name: str) -> T:
        return self._entries[name].value

    def __setitem__(self, name: str, value: T) -> None:
        """Replaces the value of ``name`` (its defaults and rules stay) or adds one without hyper-parameters."""
        old = self._entries.get(name)
        self._entries[name] = dataclasses.replace(old, value=value) if old else Entry(value, {})

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"
