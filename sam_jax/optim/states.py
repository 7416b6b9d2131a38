"""Finding one transformation's state inside a chain's state (for posterior samplers)."""

from typing import TypeVar

import jax
import optax

State = TypeVar("State")


def find_state(state: optax.OptState, state_type: type[State], needed_by: str, hint: str) -> State:
    """The one ``state_type`` inside ``state``: itself, or a component of a chain's (nested) state.

    Args:
      state: an optimizer state.
      state_type: the NamedTuple class to find.
      needed_by: the caller's name, for the error message.
      hint: which transformations hold such a state, for the error message.

    Raises:
      ValueError: ``state`` holds no ``state_type`` or more than one.
    """
    found = [
        leaf
        for leaf in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, state_type))
        if isinstance(leaf, state_type)
    ]
    if len(found) != 1:
        raise ValueError(
            f"{needed_by} needs an optimizer state holding exactly one {state_type.__name__}, found "
            f"{len(found)}; pass the state of {hint}."
        )
    return found[0]
