"""Model references -> local Hugging Face directories, GGUF import, model facts."""

from tuneserve.models.aliases import ALIASES, DEFAULT_MODEL
from tuneserve.models.errors import ModelError
from tuneserve.models.facts import ModelFacts, model_facts, model_fingerprint
from tuneserve.models.resolve import import_model, list_models, resolve_model

__all__ = [
    "ALIASES",
    "DEFAULT_MODEL",
    "ModelError",
    "ModelFacts",
    "import_model",
    "list_models",
    "model_facts",
    "model_fingerprint",
    "resolve_model",
]
