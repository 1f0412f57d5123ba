"""Inference: the KV-cache sampler (and, in later issues, the OpenAI-compatible server)."""

from jaxstack.inference.sampler import Generation, SamplingConfig, generate, process_logits

__all__ = ["Generation", "SamplingConfig", "generate", "process_logits"]
