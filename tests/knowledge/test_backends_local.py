"""In-process backends: clear errors when their packages are missing; llama.cpp plumbing on a stand-in module."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from reaseq.knowledge.backends import make_backend
from reaseq.knowledge.backends.base import BackendUnavailable, LLMBackend
from reaseq.knowledge.backends.llama_cpp import LlamaCppBackend, find_embedded_gguf
from reaseq.knowledge.config import BackendConfig, LlamaCppConfig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is not None, reason="llama-cpp-python is installed")
def test_llama_cpp_missing_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="pip install llama-cpp-python"):
        make_backend(BackendConfig(kind="llama_cpp", llama_cpp=LlamaCppConfig(model_path=tmp_path / "m.gguf")))


@pytest.mark.skipif(importlib.util.find_spec("transformers") is not None, reason="transformers is installed")
def test_transformers_missing_says_how_to_install() -> None:
    with pytest.raises(BackendUnavailable, match="pip install transformers"):
        make_backend(BackendConfig(kind="transformers"))


def test_find_embedded_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "fake_llm_pkg"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "models" / "tiny.Q4.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_embedded_gguf("fake_llm_pkg") == package / "models" / "tiny.Q4.gguf"
    with pytest.raises(BackendUnavailable, match="pip install no-such-llm-pkg"):
        find_embedded_gguf("no_such_llm_pkg")


def test_llama_cpp_backend_plumbing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a stand-in llama_cpp module: model path, grammar from the schema, usage and the Protocol."""
    calls: dict[str, object] = {}

    class Llama:
        def __init__(self, **kwargs: object) -> None:
            calls["init"] = kwargs

        def create_chat_completion(self, **kwargs: object) -> dict:
            calls["chat"] = kwargs
            return {"choices": [{"message": {"content": '{"a": "b"}'}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 11, "completion_tokens": 5}}

    class LlamaGrammar:
        @staticmethod
        def from_json_schema(schema: str, verbose: bool = True) -> str:
            return f"grammar:{schema}"

    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=Llama, LlamaGrammar=LlamaGrammar))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF model bytes")
    backend = LlamaCppBackend(LlamaCppConfig(model_path=model, n_ctx=512))
    assert isinstance(backend, LLMBackend) and backend.model_id.startswith("m.gguf:")
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    out = asyncio.run(backend.complete([{"role": "user", "content": "hi"}], json_schema=schema, max_tokens=16, temperature=0.0, seed=3))
    assert out.text == '{"a": "b"}' and (out.prompt_tokens, out.completion_tokens) == (11, 5)
    assert calls["init"]["model_path"] == str(model) and calls["init"]["n_ctx"] == 512
    assert calls["chat"]["seed"] == 3 and str(calls["chat"]["grammar"]).startswith("grammar:") and calls["chat"]["max_tokens"] == 16
    asyncio.run(backend.aclose())
