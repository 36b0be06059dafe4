"""hubtools: a Hugging Face Hub–centric toolkit for RL post-training research on small LLMs."""

from hubtools.hubenv import configure_for_endpoint as _configure

_configure()  # before anything imports huggingface_hub

__version__ = "0.1.0"
