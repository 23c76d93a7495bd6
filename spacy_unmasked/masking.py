"""Per-layer removal of the causal mask in a Hugging Face decoder.

The decoder builds its causal mask (one, or one per layer type) in every forward
pass and hands it, by keyword, to each block's attention module. For each
unmasked layer a forward pre-hook replaces that mask by its bidirectional
counterpart in the same format (additive float for eager, boolean or float for
sdpa, the untouched 2-D padding mask for flash-attention 2) and ``is_causal`` is
switched off. The counterpart is the mask mirrored across its diagonal: padding
keys stay hidden and a sliding window becomes the same window on both sides,
whatever layout (global window, hybrid sliding/full layers) the model uses.
No forward code is copied, so the mechanism follows the model through peft
wrapping and gradient checkpointing.
"""

import torch
from torch import nn

from .families import HANDLE_ATTR, check_backend, decoder_attentions, find_decoder
from .spec import UnmaskSpec, resolve_spec

_CACHE_SIZE = 8


class UnmaskHandle:
    """Undo token for :func:`unmask`: ``remove()`` restores the stock model."""

    def __init__(self, decoder: nn.Module, layers: list[int]):
        self.layers: tuple[int, ...] = tuple(layers)
        self._decoder = decoder
        self._hooks = []
        self._was_causal: dict[int, bool] = {}
        self._cache: dict[tuple, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self._flash = check_backend(decoder.config).startswith("flash")

    def _install(self) -> None:
        attentions = decoder_attentions(self._decoder)
        for index in self.layers:
            attention = attentions[index]
            self._was_causal[index] = attention.is_causal
            attention.is_causal = False
            self._hooks.append(attention.register_forward_pre_hook(self._swap_mask, with_kwargs=True))
        setattr(self._decoder, HANDLE_ATTR, self)

    def _swap_mask(self, module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        kwargs["attention_mask"] = self._bidirectional(kwargs.get("attention_mask"), hidden)
        return args, kwargs

    def _bidirectional(self, mask: torch.Tensor | None, hidden: torch.Tensor | None) -> torch.Tensor | None:
        """The bidirectional counterpart of the decoder's mask (cached per mask object)."""
        if mask is not None and mask.dim() != 4:  # flash-attention's 2-D padding mask
            return mask
        if mask is None:
            # No padding: the attention may run without a mask, but some attention classes then
            # fall back to causal whatever is_causal says. Give them an explicit all-visible mask.
            if self._flash or not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
                return None
            key = ("none", hidden.shape[0], hidden.shape[1], hidden.dtype, hidden.device)
        else:
            key = ("mask", id(mask))
        cached = self._cache.get(key)
        if cached is not None and cached[0] is mask:
            return cached[1]
        if mask is None:
            batch, length = hidden.shape[:2]
            result = torch.zeros(batch, 1, length, length, dtype=hidden.dtype, device=hidden.device)
        else:
            result = bidirectional_mask(mask)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = (mask, result)
        return result

    def remove(self) -> None:
        """Restore causal attention in every unmasked layer."""
        for hook in self._hooks:
            hook.remove()
        attentions = decoder_attentions(self._decoder)
        for index, was_causal in self._was_causal.items():
            attentions[index].is_causal = was_causal
        self._hooks, self._was_causal, self._cache = [], {}, {}
        if getattr(self._decoder, HANDLE_ATTR, None) is self:
            delattr(self._decoder, HANDLE_ATTR)

    def __repr__(self) -> str:
        return f"UnmaskHandle(layers={list(self.layers)})"


def bidirectional_mask(mask: torch.Tensor) -> torch.Tensor:
    """Mirror a 4-D causal mask ``[batch, heads, query, key]`` across its diagonal.

    A key ``j`` after query ``i`` becomes visible exactly when ``i`` is visible to
    query ``j`` and ``j`` is not padding, so a causal mask turns into a padding-only
    mask and a causal sliding window into the same window on both sides. Padding
    queries see every real key (their outputs are never used; no row stays empty).
    Key slots past the queries that no query sees (spare cache slots) stay hidden;
    masks over a real KV cache keep only the padding rule.
    """
    if mask.dtype == torch.bool:
        visible = mask
    else:
        visible = mask > torch.finfo(mask.dtype).min / 2
    queries, length = visible.shape[-2:]
    if length > queries and not bool(visible[..., queries:].any()):
        square = _mirror(visible[..., :queries])
        allowed = torch.cat([square, visible[..., queries:]], dim=-1)
    elif length == queries:
        allowed = _mirror(visible)
    else:
        allowed = visible.any(dim=-2, keepdim=True).expand_as(visible)
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)  # a fully padded row attends anywhere, never NaN
    if mask.dtype == torch.bool:
        return allowed
    return torch.zeros_like(mask).masked_fill(~allowed, torch.finfo(mask.dtype).min)


def _mirror(visible: torch.Tensor) -> torch.Tensor:
    """The bidirectional counterpart of a square boolean causal mask."""
    length = visible.shape[-1]
    later = torch.ones(length, length, dtype=torch.bool, device=visible.device).triu(1)
    # rows that see a later key were not built causally (e.g. fully hidden rows that sdpa
    # unhides); the other rows tell which keys are real
    causal_rows = ~(visible & later).any(dim=-1, keepdim=True)
    keys = (visible & causal_rows).any(dim=-2, keepdim=True)
    allowed = torch.where(later, visible.transpose(-1, -2) & keys, visible)
    padding_query = ~keys.transpose(-1, -2)
    return torch.where(padding_query, keys, allowed)


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
    return unmask_decoder(decoder, resolve_spec(spec, len(decoder.layers)))


def unmask_decoder(decoder: nn.Module, layers: list[int]) -> UnmaskHandle:
    """:func:`unmask` for a decoder stack already found (``find_decoder``) and
    layer indices already resolved (``resolve_spec``)."""
    if getattr(decoder, HANDLE_ATTR, None) is not None:
        raise ValueError(
            "This model is already unmasked: call remove() on the handle that unmask() "
            "returned before applying another spec."
        )
    handle = UnmaskHandle(decoder, layers)
    handle._install()
    return handle
