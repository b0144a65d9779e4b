"""A run's shared state: per-node diffs, merged by declared reducers (pure, no Ray).

The rules (see the README's durable-workflow section):

- A node gets its own deep copy of a *snapshot*: the state as left by the node's causal
  ancestors (the steps that, transitively, made it ready), folded in commit order. Nothing a
  concurrent branch did is visible to it, so what it sees never depends on timing.
- Its update is the set of writes it made to that copy, recorded as it writes (assignments and
  deletions, even of an equal value) plus every key whose value it changed in place; values
  are compared by their checkpoint encoding, so ``NaN`` equals ``NaN``.
- Writes are merged into the run's state in commit order. A key with a reducer
  (``Workflow(..., reducers={"notes": operator.add})``) is merged as ``reducer(old, update)``;
  any other key is replaced. Two causally concurrent writes to a key without a reducer are a
  :class:`~gecko_actors.exceptions.WorkflowError` (LangGraph's rule).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgpack

from gecko_actors.checkpoint import StateWrite, encode_value
from gecko_actors.exceptions import GeckoError, WorkflowError

Reducer = Callable[[Any, Any], Any]
_MISSING = object()


class StateView(dict):  # type: ignore[type-arg]
    """The state a node sees: a dict that remembers which keys it assigned or deleted."""

    def __init__(self, snapshot: Mapping[str, Any] | None = None) -> None:
        super().__init__(copy.deepcopy(dict(snapshot or {})))
        self.touched: list[str] = []

    def _touch(self, key: Any) -> None:
        if key not in self.touched:
            self.touched.append(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._touch(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._touch(key)

    def __ior__(self, other: Any) -> StateView:  # type: ignore[override]
        self.update(other)
        return self

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self._touch(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        key, value = super().popitem()
        self._touch(key)
        return key, value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self._touch(key)
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def clear(self) -> None:
        for key in self:
            self._touch(key)
        super().clear()

    def __reduce__(self) -> Any:
        # A plain dict plus the touched keys: pickles to a Ray task and back without re-copying.
        return (_rebuild_view, (dict(self), list(self.touched)))


def _rebuild_view(data: dict[str, Any], touched: list[str]) -> StateView:
    view = StateView()
    dict.update(view, data)
    view.touched = touched
    return view


def as_view(state: Mapping[str, Any]) -> StateView:
    """The node's state as a view: a node that rebound ``ctx.state`` to a new dict replaced
    the whole state (every key it holds is a write, every key it lacks a deletion)."""
    if isinstance(state, StateView):
        return state
    view = StateView()
    dict.update(view, state)
    view.touched = list(state)
    return view


def _canonical(value: Any) -> Any:
    """Encoded data with dict keys in sorted order: equal data, equal bytes."""
    if isinstance(value, dict):
        return [[k, _canonical(value[k])] for k in sorted(value)]
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal as checkpointed data (NaN equals NaN; key order does not count; 1 and 1.0
    differ, as they do when stored)."""
    try:
        pack = msgpack.packb
        return pack(_canonical(encode_value(a))) == pack(_canonical(encode_value(b)))
    except (GeckoError, TypeError, ValueError):
        try:
            return bool(a == b)
        except Exception:
            return False


def writes_of(snapshot: Mapping[str, Any], view: StateView) -> tuple[StateWrite, ...]:
    """The writes a node made to ``view``, a copy of ``snapshot``: what it assigned or deleted
    (in that order), then what it changed in place."""
    keys = list(view.touched)
    keys += sorted(k for k in view if k not in view.touched and not _same(snapshot.get(k), view[k]))
    keys += sorted(k for k in snapshot if k not in view and k not in keys)
    writes = []
    for key in keys:
        if key in view:
            writes.append(StateWrite(key, view[key]))
        elif key in snapshot or key in view.touched:
            writes.append(StateWrite(key, deleted=True))
    return tuple(writes)


def apply(
    state: dict[str, Any], writes: Iterable[StateWrite], reducers: Mapping[str, Reducer]
) -> None:
    """Merge ``writes`` into ``state`` in order: reducer keys through their reducer, others
    replaced; a deletion removes the key whatever its reducer. Values are copied in, so a
    reducer that changes its first argument in place never changes the recorded history."""
    for write in writes:
        if write.deleted:
            state.pop(write.key, None)
        elif write.key in reducers and write.key in state:
            update = copy.deepcopy(write.value)
            state[write.key] = reducers[write.key](state[write.key], update)
        else:
            state[write.key] = copy.deepcopy(write.value)


def fold(
    history: Iterable[tuple[StateWrite, ...]], reducers: Mapping[str, Reducer]
) -> dict[str, Any]:
    """The state after ``history`` (each step's writes, in commit order)."""
    state: dict[str, Any] = {}
    for writes in history:
        apply(state, writes, reducers)
    return state


def conflict_error(run_id: str, key: str, first: str, second: str) -> WorkflowError:
    """Two causally concurrent writes to ``key`` without a reducer (``first`` may be
    ``second``: two items of one map visit)."""
    both = f"node {first!r}" if first == second else f"nodes {first!r} and {second!r}"
    return WorkflowError(
        f"{both} both wrote state key {key!r} in parallel (in workflow run {run_id!r}): "
        "which value wins would depend on timing",
        hint=f"declare a reducer for it, e.g. Workflow(..., reducers={{{key!r}: operator.add}}), "
        "or let only one of them write it",
        run_id=run_id,
        node=second,
        key=key,
    )


def check_conflicts(
    writes: tuple[StateWrite, ...],
    reducers: Mapping[str, Any],
    writers: Mapping[str, list[tuple[int, str]]],
    after: Callable[[int], bool],
    node: str,
    run_id: str,
) -> None:
    """Two writes to a key without a reducer by causally concurrent visits (or two items of
    one map visit) are an error: which one wins would depend on timing. ``writers`` maps a
    key to the (seq, node) of its committed writes; ``after(seq)`` says whether the visit
    being checked follows that step."""
    seen: set[str] = set()
    for write in writes:
        if write.key in reducers:
            continue
        if write.key in seen:
            raise conflict_error(run_id, write.key, node, node)
        seen.add(write.key)
        for seq, other in writers.get(write.key, ()):
            if not after(seq):
                raise conflict_error(run_id, write.key, other, node)
