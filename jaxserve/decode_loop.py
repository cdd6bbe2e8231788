"""One device call's chunk of decode steps over paged KV: the loop inside the runner's
decode programs (`ModelRunner.decode`, `ModelRunner.decode_slots`).

    decode_chunk(model, strategy, kv, batch, num_steps, steps=None)
        -> kv, batch (advanced), tokens [B, num_steps], emitted [B, num_steps]

Each step feeds every row its last token, samples the next one on the device and checks it
against the row's stop ids and budget; a row that stops stays inactive for the rest of the
chunk (its later tokens are not emitted). With `steps` (a traced count <= num_steps) the loop
ends early, so one program serves every chunk length. Where the strategy decodes on a
contiguous copy of the rows' cache (the CPU's few-row path), the copy is taken once before
the loop and written back to the pages after it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxserve.batch import DecodeBatch
from jaxserve.kvcache.pages import KVPages
from jaxserve.sampling import sample
from jaxserve.strategy import (
    DecodeStrategy,
    contiguous_attention,
    flush_contiguous,
    gather_contiguous,
)


def decode_chunk(
    model, strategy: DecodeStrategy, kv: KVPages, batch: DecodeBatch, num_steps: int, steps=None
):
    """`num_steps` decode steps of `model` (a `Decoder`), or with `steps` that many."""
    bt, stop_ids = batch.block_tables, batch.stop_ids
    params = (batch.temperature, batch.top_k, batch.top_p)
    zeros = jnp.zeros_like(batch.positions)
    rows = batch.tokens.shape[0]
    contiguous = strategy.contiguous_for(rows, num_steps)
    # what the steps carry: the pages, or the rows' contiguous copy of them
    cache = gather_contiguous(kv, bt) if contiguous else kv
    attention = contiguous_attention if contiguous else strategy.attention

    def step(carry):
        cache, tok, pos, active, remaining = carry
        new_pos = pos + 1
        seq_lens = jnp.where(active, new_pos, 0)
        logits, cache = model(
            tok[:, None],
            pos[:, None],
            kv=cache,
            block_tables=bt,
            seq_lens=seq_lens,
            logits_index=zeros,
            attention=attention,
        )
        nxt = sample(logits, batch.keys, new_pos, *params)
        nxt = jnp.where(active, nxt, tok)
        emitted = active
        remaining = remaining - active.astype(remaining.dtype)
        hit_stop = jnp.any(nxt[:, None] == stop_ids, axis=-1)
        active = active & ~hit_stop & (remaining > 0)
        pos = jnp.where(emitted, new_pos, pos)
        return (cache, nxt, pos, active, remaining), (nxt, emitted)

    init = (cache, batch.tokens, batch.positions, batch.active, batch.remaining)
    if steps is None:  # exactly num_steps
        carry, (toks, emitted) = jax.lax.scan(lambda c, _: step(c), init, None, length=num_steps)
    else:  # `steps` (a traced count <= num_steps): a loop that ends early
        buffers = (
            jnp.zeros((num_steps, rows), batch.tokens.dtype),
            jnp.zeros((num_steps, rows), bool),
        )

        def body(i, state):
            carry, (toks, emitted) = state
            carry, (nxt, emitted_i) = step(carry)
            return carry, (toks.at[i].set(nxt), emitted.at[i].set(emitted_i))

        carry, (toks, emitted) = jax.lax.fori_loop(0, steps, body, (init, buffers))
    cache, tok, pos, active, remaining = carry
    # a step writes the cache of the token it is fed (at `pos`), so the chunk wrote
    # positions [start, pos) of each row
    kv = flush_contiguous(kv, bt, cache, batch.positions, pos, num_steps) if contiguous else cache
    new_batch = batch.replace(tokens=tok, positions=pos, active=active, remaining=remaining)
    return kv, new_batch, toks.T, emitted.T
