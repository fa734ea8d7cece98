"""Local Hugging Face weights through transformers (optional): no constrained decoding, so parse-repair-retry does the work."""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from functools import partial
from typing import Any

from reaseq.knowledge.backends.base import BackendUnavailable, Completion, Message
from reaseq.knowledge.config import TransformersConfig


def _import_transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise BackendUnavailable(
            "the transformers backend needs the `transformers` package, which is not installed. "
            "Fix: `pip install transformers`, or set knowledge.backend.kind to llama_cpp or openai_http"
        ) from None


class TransformersBackend:
    """A causal LM and its chat template, generating in a worker thread."""

    def __init__(self, cfg: TransformersConfig) -> None:
        transformers = _import_transformers()
        import torch

        self.model_id = cfg.model_id or cfg.model
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        self._torch = torch
        self._tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.model)
        self._model = transformers.AutoModelForCausalLM.from_pretrained(cfg.model, torch_dtype=dtype).to(cfg.device).eval()
        self._device = cfg.device
        self._lock = threading.Lock()

    def _complete_sync(self, messages: list[Message], max_tokens: int, temperature: float, seed: int | None, repeat_penalty: float) -> Completion:
        with self._lock:
            start = time.perf_counter()
            inputs = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True).to(self._device)
            if seed is not None:
                self._torch.manual_seed(seed)
            sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
            if repeat_penalty != 1.0:
                sampling["repetition_penalty"] = repeat_penalty
            with self._torch.inference_mode():
                output = self._model.generate(**inputs, max_new_tokens=max_tokens, pad_token_id=self._tokenizer.eos_token_id, **sampling)
            prompt_len = inputs["input_ids"].shape[1]
            new_tokens = output[0, prompt_len:]
            text = self._tokenizer.decode(new_tokens, skip_special_tokens=True)
            return Completion(text=text, prompt_tokens=int(prompt_len), completion_tokens=int(new_tokens.numel()), seconds=time.perf_counter() - start)

    async def complete(
        self, messages: list[Message], *, json_schema: dict[str, Any] | None, max_tokens: int, temperature: float, seed: int | None, repeat_penalty: float = 1.0
    ) -> Completion:
        """Generate (json_schema is not enforced here; the agents validate and repair)."""
        call = partial(self._complete_sync, messages, max_tokens, temperature, seed, repeat_penalty)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def aclose(self) -> None:
        """Nothing to release beyond what garbage collection frees."""
