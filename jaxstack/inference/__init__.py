"""Inference: the KV-cache sampler, the log-likelihood scorer (request packing, prefix sharing), the
OpenAI-compatible server and the one HTTP client."""

from jaxstack.inference.client import CompletionsClient, ServerError
from jaxstack.inference.sampler import Generation, SamplingConfig, generate, process_logits
from jaxstack.inference.scoring import LoglikelihoodScorer, loglikelihoods
from jaxstack.inference.server import ModelServer, load_server

__all__ = [
    "CompletionsClient",
    "Generation",
    "LoglikelihoodScorer",
    "ModelServer",
    "SamplingConfig",
    "ServerError",
    "generate",
    "load_server",
    "loglikelihoods",
    "process_logits",
]
