"""The options of `tuneserve models ...`, declared once (tuneserve/options.py builds the flags)."""

from pydantic import BaseModel, ConfigDict, Field

from tuneserve.models.aliases import DEFAULT_MODEL


class ImportOptions(BaseModel):
    """Convert a model once into $TUNESERVE_HOME/models (idempotent).

    Example: tuneserve models import smollm2-135m-instruct
    """

    model_config = ConfigDict(extra="forbid")

    ref: str = Field(DEFAULT_MODEL, description="Alias (e.g. smollm2-135m-instruct) or a .gguf file.")
    force: bool = Field(False, description="Convert again even if already imported.")


class ListOptions(BaseModel):
    """List imported models and the aliases that can be imported.

    Example: tuneserve models list
    """

    model_config = ConfigDict(extra="forbid")


class ShowOptions(BaseModel):
    """Print a model's parameters, layers, dimensions, context length, dtype and size on disk.

    Example: tuneserve models show smollm2-135m-instruct
    """

    model_config = ConfigDict(extra="forbid")

    ref: str = Field(DEFAULT_MODEL, description="Any model reference.")
    as_json: bool = Field(False, json_schema_extra={"flag": "--json"}, description="Print JSON.")
