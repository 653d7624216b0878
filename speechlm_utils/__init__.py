"""speechlm: turn a Mistral base model into a speech-in, speech-out model with Mimi tokens.

One module per stage; nothing heavy is imported here, so ``import speechlm_utils`` is instant.
"""

__version__ = "0.1.0"
