"""A runtime check that unmasking really took effect, layer by layer.

transformers changes how it builds and passes attention masks from release to
release; a change the hooks do not reach would leave the model causal without
any error. :func:`verify_unmasking` runs two tiny forward passes (a padded and
an unpadded batch), records what each layer's attention module receives,
re-runs each attention module (hooks included) with one later position
perturbed and checks that an earlier position's output changes exactly in the
unmasked layers, and that a padding position never changes a real one.
"""

import importlib.metadata

import torch
from torch import nn

from .errors import UnmaskingNotEffectiveError
from .families import decoder_attentions, find_decoder

_REAL = 2  # real tokens of every row; padded rows have one padding token more
_EARLY, _LATER = 0, 1  # a later position within any sliding window
_CHANGED = 1e-2  # relative change of the early position's output that counts as "sees the later one"


def supported_transformers() -> str:
    """The transformers requirement this package declares (from the installed metadata, e.g. ``>=4.47,<4.53.3``)."""
    try:
        requirements = importlib.metadata.requires("spacy-unmasked") or []
    except importlib.metadata.PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        name = requirement.split(";")[0].strip()
        if name.lower().startswith("transformers") and not name[len("transformers") :][:1].isalnum():
            spec = name[len("transformers") :].strip(" ()")
            if spec:
                return spec
    return "the range in spacy-unmasked's pyproject.toml"


def verify_unmasking(
    model: nn.Module, layers: list[int] | tuple[int, ...], *, decoder: nn.Module | None = None
) -> None:
    """Check in a tiny forward pass that the layers in ``layers`` let an early
    position see a later one, that every other layer does not, and that no layer
    lets a real position see padding.

    ``model`` is a bare, causal-LM or peft-wrapped decoder (quantized or on any
    device) after :func:`spacy_unmasked.unmask`. Training flags are restored.
    Raises :class:`UnmaskingNotEffectiveError` naming the failing layers and the
    supported transformers range. ``decoder``: the model's decoder stack, when
    the caller has found it already.
    """
    decoder = find_decoder(model) if decoder is None else decoder
    attentions = decoder_attentions(decoder)
    unmasked = set(layers)
    bad = sorted(index for index in unmasked if not 0 <= index < len(attentions))
    if bad:
        raise ValueError(f"layers {bad} are out of range for a decoder with {len(attentions)} layers")
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            problems: list[tuple[int, str, str]] = []
            # a padded batch (the decoder builds a mask) and an unpadded one (it may build none)
            for padded in (True, False):
                inputs = _attention_inputs(decoder, attentions, padded=padded)
                for index, attention in enumerate(attentions):
                    problems += _check_layer(
                        index, attention, *inputs[index], unmasked=index in unmasked, padded=padded
                    )
    finally:
        for module, training in flags:
            module.training = training
    if problems:
        raise UnmaskingNotEffectiveError(_message(_grouped(problems)))


def _attention_inputs(decoder: nn.Module, attentions: list[nn.Module], *, padded: bool) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) each attention module receives from the decoder, before any hook.

    All rows are equal (the padded batch's rows end in one padding token), so that
    one re-run of an attention module compares perturbed rows with row 0."""
    captured: dict[int, tuple[tuple, dict]] = {}

    def capture(index):
        def hook(module, args, kwargs):
            captured.setdefault(index, (args, dict(kwargs)))

        return hook

    hooks = [
        attention.register_forward_pre_hook(capture(index), with_kwargs=True, prepend=True)
        for index, attention in enumerate(attentions)
    ]
    embeddings = decoder.get_input_embeddings()
    device = embeddings.weight.device
    rows, length = (3, _REAL + 1) if padded else (2, _REAL)
    ids = (torch.arange(length, device=device) * 7 + 3).repeat(rows, 1) % embeddings.num_embeddings
    mask = torch.ones(rows, length, dtype=torch.long, device=device)
    mask[:, _REAL:] = 0
    try:
        decoder(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    missing = [index for index in range(len(attentions)) if index not in captured]
    if missing:
        raise UnmaskingNotEffectiveError(_message([f"the attention of layers {missing} was never called"]))
    return [captured[index] for index in range(len(attentions))]


def _check_layer(
    index: int, attention: nn.Module, args: tuple, kwargs: dict, *, unmasked: bool, padded: bool
) -> list[tuple[int, str, str]]:
    """Re-run one attention module (its hooks included) with row 1's later position
    and row 2's padding perturbed, and compare them with row 0."""
    hidden = args[0] if args else kwargs["hidden_states"]
    generator = torch.Generator().manual_seed(index)
    noise = torch.randn(hidden.shape[-1], generator=generator).to(hidden.device, hidden.dtype)
    noise = 4 * noise * hidden.float().std().clamp(min=1e-3).to(hidden.dtype)
    perturbed = hidden.clone()
    perturbed[1, _LATER] += noise
    if padded:
        perturbed[2, _REAL:] += noise
    if args:
        out = attention(perturbed, *args[1:], **kwargs)
    else:
        out = attention(**{**kwargs, "hidden_states": perturbed})
    out = (out[0] if isinstance(out, tuple) else out).float()

    name = type(attention).__name__
    batch = "a padded batch" if padded else "an unpadded batch"
    sees_later = _changed(out[1, _EARLY], out[0, _EARLY])
    problems = []
    if unmasked and not sees_later:
        problems.append((index, name, f"unmasked, but position {_EARLY} does not see position {_LATER} in {batch}"))
    if not unmasked and sees_later:
        problems.append((index, name, f"meant to be causal, but position {_EARLY} sees position {_LATER} in {batch}"))
    if padded and _changed(out[2, :_REAL], out[0, :_REAL]):
        problems.append((index, name, "real positions see padding"))
    return problems


def _changed(new: torch.Tensor, old: torch.Tensor) -> bool:
    return bool((new - old).abs().max() > _CHANGED * old.abs().max().clamp(min=1e-6))


def _grouped(problems: list[tuple[int, str, str]]) -> list[str]:
    """One line per kind of problem: "layers 4, 5 (LlamaAttention): unmasked, but ..."."""
    layers: dict[tuple[str, str], list[int]] = {}
    for index, name, text in problems:
        layers.setdefault((name, text), []).append(index)
    return [
        f"layer{'s' if len(indices) > 1 else ''} {', '.join(map(str, indices))} ({name}): {text}"
        for (name, text), indices in layers.items()
    ]


def _message(problems: list[str]) -> str:
    version = importlib.metadata.version("transformers")
    return (
        f"Unmasking is not effective with transformers {version}: {'; '.join(problems)}. The installed "
        "transformers builds or passes attention masks in a way spacy-unmasked's hooks do not reach, so the "
        f"model would run causal. spacy-unmasked supports transformers {supported_transformers()}: install a "
        "version in that range."
    )
