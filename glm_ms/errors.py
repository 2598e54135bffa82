"""The one error root of glm_ms. Each subclass also inherits the builtin it replaces, so `except ValueError`
(or KeyError, RuntimeError) code written against earlier releases keeps working; the CLIs catch `GlmMsError`."""


class GlmMsError(Exception):
    """Root of every error glm_ms raises on purpose (bad input, bad files, failed downloads)."""


class ConfigError(GlmMsError, ValueError):
    """A config.json (or a family choice) that is missing a field, out of bounds or contradicts itself."""


class CheckpointError(GlmMsError, ValueError):
    """A checkpoint file or folder that is missing, corrupt, unsafe or inconsistent."""


class ConversionError(CheckpointError):
    """A conversion that cannot be done or completed (missing/extra tensors, a bad output folder)."""


class _PlainKeyMessage(KeyError):
    # KeyError's str() quotes its message; these carry sentences, shown as they are.
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownTensorError(CheckpointError, _PlainKeyMessage):
    """A checkpoint tensor name that the family's name table does not know."""


class WeightError(GlmMsError, ValueError):
    """Missing, unexpected or mis-shaped tensors when filling a model."""


class GenerationError(GlmMsError, ValueError):
    """Generation arguments that cannot be honoured (bad values, a prompt that does not fit)."""


class TokenizerError(GlmMsError, ValueError):
    """Text or ids the tokenizer cannot encode or decode."""


class ModelScopeError(GlmMsError, RuntimeError):
    """Base class of every error raised by the ModelScope client."""


class NotFoundError(GlmMsError, FileNotFoundError):
    """A file or folder glm_ms needs (config.json, a tokenizer file, a local model folder) is not there."""


class UnknownTokenError(TokenizerError, _PlainKeyMessage):
    """A special token name the tokenizer does not have."""
