"""hubtools: a Hugging Face Hub–centric toolkit for RL post-training research on small LLMs."""

from pathlib import Path

from hubtools.hubenv import configure_for_endpoint as _configure

_configure()  # before anything imports huggingface_hub

__version__ = "0.1.0"
PROJECT = Path(__file__).resolve().parents[1]  # the checkout; paths in published commands are shown relative to it
