"""Unmask specs: which decoder layers lose their causal mask.

A spec is one of:

* ``"none"``: every layer stays causal (the stock model);
* ``"all"``: every layer is bidirectional;
* a bit string such as ``"0011"``: the layers are split into ``m = len(spec)``
  contiguous groups and bit ``i`` unmasks group ``i``. The leftmost bit is the
  group nearest the input (the convention of Dukić & Šnajder, 2024), so with
  ``m = 4``, ``"0011"`` unmasks the half of the network nearest the output.
  When the layer count ``n`` does not divide by ``m``, the first ``n % m``
  groups (those nearest the input) hold one layer more than the others;
* a list of layer indices, negative indices counting from the output
  (``[-1]`` is the last layer).
"""

from collections.abc import Sequence

from .errors import UnmaskSpecError

UnmaskSpec = str | Sequence[int]


def group_bounds(num_layers: int, num_groups: int) -> list[tuple[int, int]]:
    """Split ``num_layers`` layers into ``num_groups`` contiguous groups.

    Returns ``(start, end)`` pairs, end exclusive. Group sizes differ by at most
    one; the groups nearest the input are the larger ones.
    """
    if num_groups < 1 or num_groups > num_layers:
        raise UnmaskSpecError(
            f"Cannot split {num_layers} layers into {num_groups} groups: use a bit string of 1 to {num_layers} bits."
        )
    size, extra = divmod(num_layers, num_groups)
    bounds, start = [], 0
    for group in range(num_groups):
        end = start + size + (1 if group < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def check_spec(spec: UnmaskSpec) -> None:
    """Validate a spec's form before the model (and so its layer count) is known."""
    if isinstance(spec, (list, tuple)):
        _resolve_indices(spec, 10**9)
    elif isinstance(spec, str):
        resolve_spec(spec, max(len(spec.strip()), 1))
    else:
        resolve_spec(spec, 1)


def resolve_spec(spec: UnmaskSpec, num_layers: int) -> list[int]:
    """Resolve ``spec`` to the sorted indices of the layers it unmasks."""
    if num_layers < 1:
        raise UnmaskSpecError(f"A model with {num_layers} decoder layers cannot be unmasked.")
    if isinstance(spec, str):
        return _resolve_string(spec.strip(), num_layers)
    if isinstance(spec, (list, tuple)):
        return _resolve_indices(spec, num_layers)
    hint = (
        " (write bit strings in quotes: a config or CLI override reads 1111 as a number)"
        if isinstance(spec, int)
        else ""
    )
    raise UnmaskSpecError(
        f"Unmask spec {spec!r} has type {type(spec).__name__}{hint}: use 'none', 'all', a bit "
        "string such as '0011', or a list of layer indices such as [-2, -1]."
    )


def _resolve_string(spec: str, num_layers: int) -> list[int]:
    lowered = spec.lower()
    if lowered == "none":
        return []
    if lowered == "all":
        return list(range(num_layers))
    if not spec or set(spec) - {"0", "1"}:
        raise UnmaskSpecError(
            f"Unmask spec {spec!r} is not valid: use 'none', 'all', a bit string of 0s "
            "and 1s such as '0011' (leftmost bit = group nearest the input), or a "
            "list of layer indices."
        )
    if len(spec) > num_layers:
        raise UnmaskSpecError(
            f"Unmask spec {spec!r} has {len(spec)} groups but the model has only "
            f"{num_layers} decoder layers: use at most {num_layers} bits."
        )
    layers: list[int] = []
    for bit, (start, end) in zip(spec, group_bounds(num_layers, len(spec)), strict=False):
        if bit == "1":
            layers.extend(range(start, end))
    return layers


def _resolve_indices(spec: Sequence[int], num_layers: int) -> list[int]:
    resolved = set()
    for index in spec:
        if isinstance(index, bool) or not isinstance(index, int):
            raise UnmaskSpecError(
                f"Unmask spec {list(spec)!r} holds {index!r}, which is not a layer index: "
                "use integers such as [0, 1, -1]."
            )
        if not -num_layers <= index < num_layers:
            raise UnmaskSpecError(
                f"Layer index {index} in unmask spec {list(spec)!r} is out of range for a "
                f"model with {num_layers} decoder layers: use -{num_layers}..{num_layers - 1}."
            )
        position = index % num_layers
        if position in resolved:
            raise UnmaskSpecError(f"Unmask spec {list(spec)!r} names layer {position} twice.")
        resolved.add(position)
    return sorted(resolved)
