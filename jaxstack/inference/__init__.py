"""Inference: the KV-cache sampler, the continuous-batching engine, the log-likelihood scorer (request
packing, prefix sharing) and the one HTTP client. The OpenAI-compatible server is
:mod:`jaxstack.inference.server` (imported on its own: it pulls in FastAPI and uvicorn)."""

from jaxstack.inference.client import CompletionsClient, ServerError
from jaxstack.inference.engine import Engine, QueueFull, SamplingParams
from jaxstack.inference.sampler import Generation, RowSampling, SamplingConfig, generate, process_logits
from jaxstack.inference.scoring import LoglikelihoodScorer, loglikelihoods

__all__ = [
    "CompletionsClient",
    "Engine",
    "Generation",
    "LoglikelihoodScorer",
    "QueueFull",
    "RowSampling",
    "SamplingConfig",
    "SamplingParams",
    "ServerError",
    "generate",
    "loglikelihoods",
    "process_logits",
]
