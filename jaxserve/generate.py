"""Batch generation: prompts of different lengths -> completions, on a paged KV cache.

    prompts -> pad to a length bucket -> prefill (first token) -> decode in chunks of
    `chunk` tokens on device -> host checks stop strings -> completions

Shapes are bucketed (batch and prompt length to powers of two, new tokens to a multiple of
the chunk) so a repeated workload compiles nothing after warm-up. The next chunk is
dispatched before the host reads the previous one, so the device never waits on Python.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jaxserve.batch import DecodeBatch, PrefillBatch
from jaxserve.errors import InputError
from jaxserve.models.transformer import Decoder
from jaxserve.runner import ModelRunner
from jaxserve.sampling import SamplingParams, sampling_arrays
from jaxserve.tokenizer import Tokenizer
from jaxserve.utils import pow2


@dataclasses.dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]  # generated tokens, including a stop token if one ended it
    text: str | None  # decoded text, cut before a stop string (None without a tokenizer)
    finish_reason: str  # "stop" (stop token or string) or "length"


class Generator:
    def __init__(
        self,
        model: Decoder,
        tokenizer: Tokenizer | None = None,
        mesh: Mesh | None = None,
        page_size: int = 16,
        chunk: int = 16,
    ):
        self.runner = ModelRunner(model, mesh)
        self.config = model.config
        self.tokenizer = tokenizer
        self.page_size = page_size
        self.chunk = chunk
        self._kv = None

    def _pages(self, num_pages: int):
        if self._kv is None or self._kv.num_pages != num_pages:
            self._kv = None  # free the old pool before allocating the new one
            self._kv = self.runner.new_kv(num_pages, self.page_size)
        return self._kv

    def encode(self, prompts: Sequence[str | Sequence[int]]) -> list[list[int]]:
        out = []
        for p in prompts:
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise InputError("text prompts need a tokenizer")
                ids = self.tokenizer.encode(p)
                if self.tokenizer.bos_id is not None:
                    ids = [self.tokenizer.bos_id] + ids
            else:
                ids = [int(t) for t in p]
            if not ids:
                raise InputError("empty prompt")
            bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
            if bad:
                raise InputError(
                    f"token ids {bad[:5]} are outside the vocabulary [0, {self.config.vocab_size})"
                )
            out.append(ids)
        return out

    def generate(
        self, prompts: Sequence[str | Sequence[int]], params: SamplingParams
    ) -> list[Completion]:
        ids = self.encode(prompts)
        n = len(ids)
        longest = max(len(p) for p in ids)
        if longest + params.max_new_tokens > self.config.max_seq_len:
            raise InputError(
                f"prompt ({longest} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds "
                f"the model's max_seq_len {self.config.max_seq_len}"
            )
        data = self.runner.data_size
        b = pow2(n, data)
        t = pow2(longest, 16)
        steps = math.ceil((params.max_new_tokens - 1) / self.chunk) * self.chunk
        pages_per_seq = math.ceil((t + steps + 1) / self.page_size)
        kv = self._pages(1 + b * pages_per_seq)

        tokens = np.zeros((b, t), np.int32)
        lengths = np.zeros((b,), np.int32)
        for i, p in enumerate(ids):
            tokens[i, : len(p)] = p
            lengths[i] = len(p)
        block_tables = (1 + np.arange(b * pages_per_seq, dtype=np.int32)).reshape(b, -1)
        block_tables[n:] = 0  # padding rows write to the null page
        seeds = params.seed + np.arange(b, dtype=np.uint32)
        keys = np.asarray(jax.vmap(jax.random.PRNGKey)(seeds))
        samp = sampling_arrays([params] * n, keys[:n], b)
        batch = PrefillBatch(tokens=tokens, lengths=lengths, block_tables=block_tables, **samp)
        kv, first = self.runner.prefill(kv, self.runner.put_batch(batch))

        stop_ids = np.full((b, max(1, len(params.stop_token_ids))), -1, np.int32)
        stop_ids[:, : len(params.stop_token_ids)] = params.stop_token_ids
        first_np = np.asarray(first)
        active = np.arange(b) < n
        active &= ~np.isin(first_np, params.stop_token_ids) & (params.max_new_tokens > 1)
        dec = DecodeBatch(
            tokens=first_np,
            positions=lengths.copy(),
            block_tables=block_tables,
            active=active,
            remaining=np.full((b,), params.max_new_tokens - 1, np.int32),
            stop_ids=stop_ids,
            **samp,
        )
        dec = self.runner.put_batch(dec)

        outputs = [[int(first_np[i])] for i in range(n)]
        done = [False] * n
        reasons = ["length"] * n
        texts: list[str | None] = [None] * n
        for i in range(n):
            self._check_stop(i, outputs, done, reasons, texts, params)

        pending = None
        for _ in range(steps // self.chunk + 1):
            nxt = None
            if not all(done) and _ * self.chunk < steps:
                kv, dec, toks, emitted = self.runner.decode(kv, dec, self.chunk)
                nxt = (toks, emitted)
            if pending is not None:
                toks_np, emitted_np = (np.asarray(x) for x in pending)
                for i in range(n):
                    if done[i]:
                        continue
                    outputs[i].extend(int(x) for x in toks_np[i][emitted_np[i]])
                    self._check_stop(i, outputs, done, reasons, texts, params)
            pending = nxt
            if pending is None:
                break
        self._kv = kv
        return [
            Completion(
                ids[i],
                outputs[i],
                texts[i] if texts[i] is not None else self._text(outputs[i]),
                reasons[i],
            )
            for i in range(n)
        ]

    def _text(self, token_ids: list[int]) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode(token_ids)

    def _check_stop(self, i, outputs, done, reasons, texts, params: SamplingParams) -> None:
        out = outputs[i]
        for j, tok in enumerate(out):
            if tok in params.stop_token_ids:
                del out[j + 1 :]
                done[i], reasons[i] = True, "stop"
                break
        if len(out) >= params.max_new_tokens:
            del out[params.max_new_tokens :]
            done[i] = True
        if params.stop_strings and self.tokenizer is not None:
            text = self.tokenizer.decode(out)
            hits = [(text.find(s), s) for s in params.stop_strings if s in text]
            if hits:
                cut, stop = min(hits)
                # keep the shortest token prefix whose text contains the stop string
                j = next(j for j in range(1, len(out) + 1) if stop in self._text(out[:j]))
                del out[j:]
                texts[i] = text[:cut]
                done[i], reasons[i] = True, "stop"


def parse_ids(text: str, flag: str) -> list[int]:
    """'1,2,3' -> [1, 2, 3]; a ValueError naming `flag` otherwise."""
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"{flag}: {text!r} is not a comma-separated list of integers") from None
    if not ids or min(ids) < 0:
        raise InputError(f"{flag}: {text!r} must name at least one non-negative token id")
    return ids


def run_cli(
    *,
    checkpoint: str | None,
    preset: str | None,
    prompts: Sequence[str],
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    stop_token_ids: Sequence[int] | None = None,
    seed: int = 0,
    mesh: str | None = None,
    dtype: str | None = None,
    output_json: str | None = None,
    flag_values: dict | None = None,
) -> list[Completion]:
    """The `experiments.generate` job: load, generate, print, write JSON."""
    import time

    from jaxserve import experiment, sharding

    model, tokenizer, source = experiment.resolve_model(checkpoint, preset, seed, dtype)
    if prompts and tokenizer is None:
        raise InputError(f"{checkpoint} has no tokenizer files: pass --prompt_ids instead")
    if stop_token_ids is None:
        eos = model.config.eos_token_id
        stop_token_ids = [eos] if eos is not None else []
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_token_ids=tuple(stop_token_ids),
        stop_strings=tuple(stop),
        seed=seed,
    )
    gen = Generator(model, tokenizer, mesh=sharding.make_mesh(mesh) if mesh else None)
    inputs = list(prompts) + [list(p) for p in prompt_ids]
    start = time.perf_counter()
    completions = gen.generate(inputs, params)
    seconds = time.perf_counter() - start
    for prompt, c in zip(inputs, completions):
        shown = prompt if isinstance(prompt, str) else f"ids {list(prompt)}"
        print(f"--- prompt: {shown!r}")
        print(c.text if c.text is not None else f"ids {c.token_ids}")
        print(f"--- {len(c.token_ids)} tokens, finish: {c.finish_reason}")
    print(f"model: {source}; {seconds:.2f} s (includes compilation)")
    if output_json:
        records = [
            {
                "prompt": p if isinstance(p, str) else None,
                "prompt_ids": c.prompt_ids,
                "token_ids": c.token_ids,
                "text": c.text,
                "finish_reason": c.finish_reason,
            }
            for p, c in zip(inputs, completions)
        ]
        experiment.write_json(
            output_json,
            {
                "flags": flag_values or {},
                "environment": experiment.environment(),
                "model": {"source": source, "config": model.config.to_dict()},
                "sampling": dataclasses.asdict(params),
                "seconds": seconds,
                "completions": records,
            },
        )
    return completions
