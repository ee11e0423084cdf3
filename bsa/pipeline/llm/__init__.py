"""The LLM engine and its parts: providers, the HTTP client, the reply cache and its key, structured output,
reasoning split, the embedded llama.cpp server."""

from bsa.pipeline.llm.engine import Engine, Request, Response, image_request

__all__ = ["Engine", "Request", "Response", "image_request"]
