"""tuneserve: finetune -> optimize -> serve -> bench -> deploy, over TRL, PEFT, llm-compressor and vLLM."""

__version__ = "0.1.0"
