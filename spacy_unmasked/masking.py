"""Per-layer removal of the causal mask in a Hugging Face decoder.

The decoder builds one causal mask per forward pass and hands it, by keyword,
to every layer's attention module. For each unmasked layer a forward pre-hook
swaps that mask for a padding-only mask in the same format (additive float for
eager, boolean for sdpa, untouched 2-D padding mask for flash-attention 2) and
``is_causal`` is switched off. No forward code is copied, so the mechanism
follows the model through peft wrapping and gradient checkpointing.
"""

import torch
from torch import nn

from .families import find_decoder, sliding_window
from .spec import UnmaskSpec, resolve_spec

_HANDLE_ATTR = "_spacy_unmasked_handle"


class UnmaskHandle:
    """Undo token for :func:`unmask`: ``remove()`` restores the stock model."""

    def __init__(self, decoder: nn.Module, layers: list[int]):
        self.layers: tuple[int, ...] = tuple(layers)
        self._decoder = decoder
        self._hooks = []
        self._was_causal: dict[int, bool] = {}
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _install(self) -> None:
        for index in self.layers:
            attention = self._decoder.layers[index].self_attn
            self._was_causal[index] = attention.is_causal
            attention.is_causal = False
            window = sliding_window(attention)
            self._hooks.append(attention.register_forward_pre_hook(self._make_hook(window), with_kwargs=True))
        setattr(self._decoder, _HANDLE_ATTR, self)

    def _make_hook(self, window: int | None):
        def swap_mask(module, args, kwargs):
            kwargs["attention_mask"] = self._padding_only(kwargs.get("attention_mask"), window)
            return args, kwargs

        return swap_mask

    def _padding_only(self, mask: torch.Tensor | None, window: int | None) -> torch.Tensor | None:
        """Turn the decoder's mask into a mask that hides padding keys only."""
        if mask is None or mask.dim() == 2:  # no padding, or flash-attention's 2-D mask
            return mask
        key = (id(mask), window)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is mask:
            return cached[1]
        # A key that no query may attend to is padding: reducing over the query axis
        # recovers the padding row from any causal or sliding-window mask.
        if mask.dtype == torch.bool:
            keys = mask.any(dim=-2, keepdim=True)
            result: torch.Tensor | None = None if bool(keys.all()) else keys
        else:
            result = mask.amax(dim=-2, keepdim=True)
        length = mask.shape[-1]
        if window is not None and length > window:
            result = _symmetric_window(result, mask, window)
        if len(self._cache) >= 4:
            self._cache.clear()
        self._cache[key] = (mask, result)
        return result

    def remove(self) -> None:
        """Restore causal attention in every unmasked layer."""
        for hook in self._hooks:
            hook.remove()
        for index, was_causal in self._was_causal.items():
            self._decoder.layers[index].self_attn.is_causal = was_causal
        self._hooks, self._was_causal, self._cache = [], {}, {}
        if getattr(self._decoder, _HANDLE_ATTR, None) is self:
            delattr(self._decoder, _HANDLE_ATTR)

    def __repr__(self) -> str:
        return f"UnmaskHandle(layers={list(self.layers)})"


def _symmetric_window(keys: torch.Tensor | None, mask: torch.Tensor, window: int) -> torch.Tensor:
    """Restrict a padding mask to keys within ``window`` positions either side.

    A padding query far from every real key would be left with no key at all,
    which older torch versions turn into NaN; such rows may attend everywhere
    (their outputs are padding and never used)."""
    length = mask.shape[-1]
    positions = torch.arange(length, device=mask.device)
    band = (positions[:, None] - positions[None, :]).abs() < window
    if mask.dtype == torch.bool:
        allowed = band if keys is None else keys & band
        return allowed | ~allowed.any(dim=-1, keepdim=True)
    blocked = torch.finfo(mask.dtype).min
    result = keys + torch.zeros_like(band, dtype=mask.dtype).masked_fill(~band, blocked)
    return result.masked_fill((result <= blocked).all(dim=-1, keepdim=True), 0.0)


def resolve_layers(model: nn.Module | int, spec: UnmaskSpec) -> list[int]:
    """The decoder layer indices that ``spec`` unmasks in ``model``.

    ``model`` is a Hugging Face decoder (bare, causal-LM or peft-wrapped) or a
    layer count. Use it to print what a config's ``unmask`` setting means.
    """
    num_layers = model if isinstance(model, int) else len(find_decoder(model).layers)
    return resolve_spec(spec, num_layers)


def unmask(model: nn.Module, spec: UnmaskSpec) -> UnmaskHandle:
    """Make the decoder layers picked by ``spec`` bidirectional.

    Padding keys stay hidden in every layer. Returns a handle whose ``remove()``
    restores the stock model exactly.
    """
    decoder = find_decoder(model)
    if getattr(decoder, _HANDLE_ATTR, None) is not None:
        raise ValueError(
            "This model is already unmasked: call remove() on the handle that unmask() "
            "returned before applying another spec."
        )
    handle = UnmaskHandle(decoder, resolve_spec(spec, len(decoder.layers)))
    handle._install()
    return handle
