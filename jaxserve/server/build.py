"""One engine for the HTTP server, built as `experiments.serve` builds each of its engines.

ServeSettings -> model (preset or checkpoint) -> runner (base, or KV prediction's prefill)
-> profile (or a saved one) -> SchedulerConfig -> Engine -> warmup of every shape bucket
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from jaxserve import distributed, experiment, serve
from jaxserve.engine import Engine
from jaxserve.errors import InputError
from jaxserve.models.transformer import Decoder
from jaxserve.runner import ModelRunner, ServingModel
from jaxserve.server import protocol
from jaxserve.tokenizer import Tokenizer


def make_engine(
    s: serve.ServeSettings,
    policy: str,
    *,
    checkpoint: str | None,
    preset: str | None,
    profile_path: str | None = None,
    load_prefill_model: Callable[[str, Decoder], ServingModel] | None = None,
    clock: Callable[[], float] | None = None,
) -> tuple[Engine, Tokenizer | None, str]:
    """(warmed-up engine, tokenizer or None, where the weights came from).
    `load_prefill_model(dir, base)`: the model of `s.prefill`'s checkpoint (KV prediction's,
    resolved by the entry point). `clock`: the engine's (across processes, a
    `multihost.ReplicatedClock`)."""
    model, tokenizer, source = experiment.resolve_model(checkpoint, preset, s.seed)
    kvp_dir = serve.parse_prefill(s.prefill)
    if kvp_dir is not None and load_prefill_model is None:
        raise InputError(f"--prefill={s.prefill}: no loader for this prefill was given")
    served = distributed.to_host(load_prefill_model(kvp_dir, model) if kvp_dir else model)
    runner = ModelRunner(served, serve.serving_mesh(s))
    host_mode = serve.serving_host_mode(s.host_mode)
    if profile_path:  # (across processes, process 0's: both share it)
        prof = serve.load_profile(profile_path)
    else:
        prof = serve.profile_runner(runner, s, host_mode=host_mode)
    config = model.config
    sc = serve.scheduler_config(s, prof, config.max_seq_len, serve.page_nbytes(config, s.page_size))
    engine = Engine(
        model,
        policy,
        sc,
        tokenizer,
        runner=runner,
        host_mode=host_mode,
        decode_steps=s.decode_steps,
        **serve.SWITCHES[s.switch],
        **({"clock": clock} if clock is not None else {}),
    )
    engine.warmup(  # with reuse, the continuation of a kept turn too (`conversation`)
        min(s.max_prompt_len, config.max_seq_len),
        min(config.max_seq_len, s.max_prompt_len + s.max_output_len),
        extend=engine.reuse,
    )
    return engine, tokenizer, source


def chat_template_for(checkpoint: str | None, tokenizer: Tokenizer | None):
    """The checkpoint's chat template (tokenizer_config.json), else the plain one."""
    if checkpoint:
        path = os.path.join(checkpoint, "tokenizer_config.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                source = json.load(f).get("chat_template")
            if isinstance(source, str) and tokenizer is not None:
                backend = tokenizer.backend

                def token(i):
                    return backend.id_to_token(i) or "" if i is not None else ""

                return protocol.jinja_template(
                    source, token(tokenizer.bos_id), token(tokenizer.eos_id)
                )
    return protocol.plain_template
