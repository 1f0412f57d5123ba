"""Inference: the KV-cache sampler, the OpenAI-compatible server and its client."""

from jaxstack.inference.sampler import Generation, SamplingConfig, generate, process_logits
from jaxstack.inference.client import CompletionsClient, ServerError
from jaxstack.inference.server import ModelServer, load_server

__all__ = [
    "CompletionsClient",
    "Generation",
    "ModelServer",
    "SamplingConfig",
    "ServerError",
    "generate",
    "load_server",
    "process_logits",
]
