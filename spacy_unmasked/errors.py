"""Error classes of spacy-unmasked that belong to no single module.

Every error class is exported from the package root as well."""


class BaseModelNotFoundError(OSError):
    """The base model named by a pipeline cannot be found."""


class BaseModelMismatchError(ValueError):
    """The base model found differs from the one a pipeline was trained on."""


class PipelineFormatError(ValueError):
    """A saved transformer that cannot be loaded as it is."""


class QuantizationUnavailableError(ImportError):
    """bitsandbytes is missing or too old for the device the model runs on."""
