"""Key encoder: texts -> L2-normalised float32 keys (see docs/ENGINE.md)."""
from engine.encode.encoder import (
    DEFAULT_NAME,
    MAX_TOKENS,
    POOLING,
    EncoderError,
    KeyEncoder,
    default_model_path,
    get_default_encoder,
)

__all__ = [
    "DEFAULT_NAME",
    "MAX_TOKENS",
    "POOLING",
    "EncoderError",
    "KeyEncoder",
    "default_model_path",
    "get_default_encoder",
]
