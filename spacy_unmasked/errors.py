"""Every error class of spacy-unmasked, each exported from the package root too."""


class UnmaskSpecError(ValueError):
    """An unmask spec that cannot be applied to a model."""


class UnsupportedModelError(ValueError):
    """A model, family or attention backend that cannot be unmasked."""


class UnmaskingNotEffectiveError(RuntimeError):
    """The installed transformers builds attention masks in a way unmasking does not reach."""


class BaseModelNotFoundError(OSError):
    """The base model named by a pipeline cannot be found."""


class BaseModelMismatchError(ValueError):
    """The base model found differs from the one a pipeline was trained on."""


class PipelineFormatError(ValueError):
    """A saved transformer that cannot be loaded as it is."""


class QuantizationUnavailableError(ImportError):
    """bitsandbytes is missing or too old for the device the model runs on."""


class AnnotationInputError(ValueError):
    """An input file or record that cannot be annotated (``spacy ray-apply``, ``spacy ray-serve``)."""


class PipelineLoadError(RuntimeError):
    """A pipeline could not be loaded on a Ray worker."""
