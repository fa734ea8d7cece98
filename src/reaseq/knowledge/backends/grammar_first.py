"""Greedy grammar-constrained sampling for llama.cpp that checks the grammar on the best token first.

llama-cpp-python's sampler chain runs the grammar over the whole vocabulary (49k tokens for SmolLM2) at every
step, which costs more than the forward pass of a small model. Under greedy decoding the constrained argmax
equals the unconstrained one whenever the grammar accepts that token, so checking that single token first and
masking the full vocabulary only when it is rejected gives the same tokens for much less work (llama.cpp's own
`common_sampler` does the same). Sampling with temperature keeps llama-cpp-python's chain.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np


def _token_data_dtype(llama_cpp: Any) -> np.dtype:
    """numpy's view of llama.cpp's `llama_token_data` struct (id, logit, p), with the C layout's offsets."""
    struct = llama_cpp.llama_token_data
    names = [name for name, _ in struct._fields_]
    return np.dtype({
        "names": names,
        "formats": [np.int32, np.float32, np.float32],
        "offsets": [getattr(struct, name).offset for name in names],
        "itemsize": ctypes.sizeof(struct),
    })


class GrammarFirstGreedy:
    """Repeat penalty, then greedy, with the grammar applied to the whole vocabulary only when the best token breaks it.

    Has the `sample(ctx, idx)` method that `Llama.generate` calls on its sampler, and frees its llama.cpp
    samplers on `close`.
    """

    def __init__(self, llama_cpp: Any, model: Any, grammar: Any, n_vocab: int, penalty_last_n: int, repeat_penalty: float) -> None:
        self._lib = llama_cpp
        self._n_vocab = n_vocab
        self._penalties = llama_cpp.llama_sampler_init_penalties(n_vocab, penalty_last_n, repeat_penalty, 0.0, 0.0)
        self._grammar = llama_cpp.llama_sampler_init_grammar(model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
        if not self._grammar:
            raise ValueError("llama.cpp could not parse the grammar")
        # One buffer for the whole vocabulary and one for the single-token check, reused at every step.
        self._all = np.zeros(n_vocab, dtype=_token_data_dtype(llama_cpp))
        self._all["id"] = np.arange(n_vocab, dtype=np.int32)
        self._one = np.zeros(1, dtype=self._all.dtype)
        self._all_array = self._array(self._all)
        self._one_array = self._array(self._one)
        self.steps = 0  # tokens sampled
        self.full_masks = 0  # of those, how many needed the grammar over the whole vocabulary

    def _array(self, buffer: np.ndarray) -> Any:
        data = buffer.ctypes.data_as(ctypes.POINTER(self._lib.llama_token_data))
        return self._lib.llama_token_data_array(data=data, size=len(buffer), selected=-1, sorted=False)

    def _apply(self, sampler: Any, array: Any, size: int) -> None:
        array.size = size
        array.selected = -1
        array.sorted = False
        self._lib.llama_sampler_apply(sampler, ctypes.byref(array))

    def sample(self, ctx: Any, idx: int) -> int:
        """The next token at logits row `idx` of the context (negative counts from the end)."""
        logits = self._lib.llama_get_logits_ith(ctx.ctx, idx)
        self._all["logit"] = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
        self._apply(self._penalties, self._all_array, self._n_vocab)
        token = int(np.argmax(self._all["logit"]))
        self._one[0] = self._all[token]
        self._apply(self._grammar, self._one_array, 1)
        if not np.isfinite(self._one["logit"][0]):
            self._apply(self._grammar, self._all_array, self._n_vocab)
            token = int(np.argmax(self._all["logit"]))
            self.full_masks += 1
        self.steps += 1
        self._lib.llama_sampler_accept(self._penalties, token)
        self._lib.llama_sampler_accept(self._grammar, token)
        return token

    def close(self) -> None:
        """Free the llama.cpp samplers."""
        for name in ("_penalties", "_grammar"):
            sampler = getattr(self, name, None)
            if sampler:
                self._lib.llama_sampler_free(sampler)
                setattr(self, name, None)

    def __del__(self) -> None:
        self.close()
