"""LoRA adapters (peft): applying them, checking that targets and saved weights
fit, and merging them into the base weights for prediction."""

import torch

from .errors import BaseModelMismatchError
from .settings import LoRASettings


def apply_lora(
    model: torch.nn.Module, lora: LoRASettings, *, state: dict[str, torch.Tensor] | None = None
) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters whose weights are float32: fresh ones,
    or the saved ``state`` (checked to fit)."""
    import peft

    check_lora_targets(model, lora)
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
    )
    model = peft.get_peft_model(model, config, autocast_adapter_dtype=True)  # adapters stay float32
    if state is not None:
        check_adapter(model, state, "saved with this pipeline")
        peft.set_peft_model_state_dict(model, state)
    return model


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights of a peft-wrapped model, as peft saves them."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, save_embedding_layers=False)


def check_lora_targets(model: torch.nn.Module, lora: LoRASettings) -> None:
    """Raise if a LoRA target module name matches no linear layer of ``model``."""
    linear = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__
    ]
    missing = [t for t in lora.target_modules if not any(n == t or n.endswith("." + t) for n in linear)]
    if missing:
        short_names = sorted({name.rsplit(".", 1)[-1] for name in linear})
        raise ValueError(
            f"LoRA target modules {missing} do not exist in this model. Its linear layers are: "
            f"{', '.join(short_names)}. Set lora.target_modules to some of them."
        )


def check_adapter(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise if saved LoRA weights do not fit the model's adapters."""
    expected = adapter_state(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise BaseModelMismatchError(
            f"The LoRA adapter {source} does not fit this model (missing {len(missing)}, unexpected "
            f"{len(unexpected)}, wrong shape {len(wrong_shape)} tensors, e.g. "
            f"{(missing + unexpected + wrong_shape)[:2]}): load it with the base model and LoRA settings "
            "it was trained with."
        )


class AdapterMerge:
    """Whether a loaded LoRA pipeline predicts with its adapters merged into the
    base weights (faster: one matmul per layer instead of three).

    ``enabled`` is the component's ``merge_lora`` switch; ``allowed`` is set for
    a pipeline loaded from disk, never for one that trains. Training takes the
    adapters out again, for good."""

    def __init__(self) -> None:
        self.enabled = True
        self.allowed = False
        self.merged = False

    def before_predict(self, model: torch.nn.Module) -> None:
        """Merge the adapters once, if this pipeline may."""
        if self.allowed and self.enabled and not self.merged:
            model.merge_adapter()
            self.merged = True

    def stop(self, model: torch.nn.Module | None) -> None:
        """Take merged adapters out of the base weights and stop merging. In
        bfloat16 the base then differs from the original by at most one rounding
        step in the adapted layers."""
        if self.merged and model is not None:
            model.unmerge_adapter()
        self.merged = False
        self.allowed = False
