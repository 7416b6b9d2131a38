"""The one registry shape of models, losses, mixings and optimizers (``sam_jax.models.registry``)."""

import pytest

from sam_jax.losses import LOSSES, MIXINGS
from sam_jax.models import MODELS
from sam_jax.models.registry import NON_NEGATIVE, POSITIVE_INTEGER, UNIT_INTERVAL, Registry, broken_rules
from sam_jax.optim import OPTIMIZERS


def _registry() -> Registry:
    registry = Registry("widget")

    def check(hparams):
        if hparams.get("low", 0) > hparams.get("high", 1):
            raise ValueError("low must be <= high")

    registry.register("a", "value-a", defaults={"low": 0.0, "high": 1.0}, rules={"low": NON_NEGATIVE}, check=check)
    registry.register("b", "value-b")
    return registry


def test_lookup_defaults_and_mapping_view():
    registry = _registry()
    assert registry.lookup("a") == "value-a" and registry["b"] == "value-b"
    assert sorted(registry) == ["a", "b"] and "a" in registry and len(registry) == 2
    defaults = registry.defaults("a")
    defaults["low"] = 5.0  # a fresh dict: the entry keeps its defaults
    assert registry.defaults("a") == {"low": 0.0, "high": 1.0} and registry.defaults("b") == {}
    with pytest.raises(ValueError, match=r"Unknown widget 'c'; choose one of \['a', 'b'\]"):
        registry.lookup("c")


def test_register_once_and_substitute_as_a_dict():
    registry = _registry()
    with pytest.raises(ValueError, match="Widget 'a' is registered already"):
        registry.register("a", "other")
    registry["a"] = "replaced"  # what monkeypatch.setitem does: the defaults and rules stay
    assert registry.lookup("a") == "replaced" and registry.defaults("a") == {"low": 0.0, "high": 1.0}
    registry["new"] = "added"
    assert registry.defaults("new") == {}
    del registry["new"]
    assert "new" not in registry


def test_validate_unknown_field_rule_and_check():
    registry = _registry()
    registry.validate("a", {"low": 0.5})
    with pytest.raises(ValueError, match=r"a: unknown hyper-parameter 'lo'; a takes \['high', 'low'\]"):
        registry.validate("a", {"lo": 0.5})
    with pytest.raises(ValueError, match=r"a: hyper-parameter low=-1 is invalid; low must be >= 0"):
        registry.validate("a", {"low": -1})
    with pytest.raises(ValueError, match="low must be <= high"):
        registry.validate("a", {"low": 2.0, "high": 1.0})
    with pytest.raises(ValueError, match="b takes none"):
        registry.validate("b", {"x": 1})


def test_typed_registry_requires_the_defaults_types():
    registry = Registry("widget", typed=True)
    registry.register("a", None, defaults={"rate": 0.1, "flag": False})
    with pytest.raises(ValueError, match=r"a.rate='x' must be a number"):
        registry.validate("a", {"rate": "x"})
    with pytest.raises(ValueError, match=r"a.flag=1 must be True or False"):
        registry.validate("a", {"flag": 1})


def test_rules_say_what_is_broken():
    rules = {"beta": UNIT_INTERVAL, "n": POSITIVE_INTEGER}
    assert broken_rules(rules, {"beta": 0.5, "n": 3}) == []
    assert broken_rules(rules, {"beta": 1.0, "n": 2.5, "other": -1}) == [
        "beta must be in [0, 1)",
        "n must be a positive integer",
    ]
    assert not UNIT_INTERVAL.holds(True) and not NON_NEGATIVE.holds("1")


@pytest.mark.parametrize("registry", [MODELS, LOSSES, MIXINGS, OPTIMIZERS], ids=lambda r: r.kind)
def test_every_registry_has_the_one_shape(registry):
    assert isinstance(registry, Registry) and len(registry)
    for name in registry:
        registry.validate(name, registry.defaults(name))  # every entry's defaults follow its own rules
