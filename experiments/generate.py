"""Generate text from a checkpoint or a preset, sharded over the local devices.

    python -m experiments.generate --preset=tiny --prompt="def fib(n):" --max_new_tokens=32
    python -m experiments.generate --checkpoint=/models/Llama-3.2-1B --prompt_ids=128000,791 \
        --mesh=data:1,model:4 --output_json=out.json
"""

from __future__ import annotations

import os

from absl import app, flags

from jaxserve import cli, config, distributed, experiment, generate, sharding
from jaxserve.errors import InputError

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "HF-format or jaxserve checkpoint directory.")
_PRESET = flags.DEFINE_string("preset", None, "Preset name (random weights), e.g. tiny, small.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "Prompt text; repeat the flag for a batch.")
_PROMPT_IDS = flags.DEFINE_multi_string(
    "prompt_ids", [], "Comma-separated token ids; repeat the flag for a batch."
)
_MAX_NEW = flags.DEFINE_integer(
    "max_new_tokens", 32, "Tokens to generate per prompt.", lower_bound=1
)
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy.", lower_bound=0.0)
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).", lower_bound=0)
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass in (0, 1] (1 = off).")
_STOP = flags.DEFINE_multi_string("stop", [], "Stop string (repeatable).")
_STOP_IDS = flags.DEFINE_list("stop_token_ids", None, "Stop token ids (default: the EOS id).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (and weight seed for presets).")
_MESH = flags.DEFINE_string("mesh", None, "Device mesh, e.g. data:2,model:4 (default: 1 device).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Override a preset's dtype.")
_OUTPUT = flags.DEFINE_string("output_json", None, "Write prompts and completions here.")

_ALL = (
    _CHECKPOINT,
    _PRESET,
    _PROMPT,
    _PROMPT_IDS,
    _MAX_NEW,
    _TEMPERATURE,
    _TOP_K,
    _TOP_P,
    _STOP,
    _STOP_IDS,
    _SEED,
    _MESH,
    _DTYPE,
    _OUTPUT,
)

flags.register_validator("top_p", lambda v: 0 < v <= 1, "--top_p must be in (0, 1]")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.single_process_only("experiments.generate")
    if (_CHECKPOINT.value is None) == (_PRESET.value is None):
        raise app.UsageError("give exactly one of --checkpoint or --preset")
    if not _PROMPT.value and not _PROMPT_IDS.value:
        raise app.UsageError("give --prompt or --prompt_ids")
    if _CHECKPOINT.value is not None and not os.path.isdir(_CHECKPOINT.value):
        raise app.UsageError(f"--checkpoint: directory {_CHECKPOINT.value!r} does not exist")
    if _PRESET.value is not None and _PRESET.value not in config.PRESETS:
        raise app.UsageError(
            f"--preset: unknown {_PRESET.value!r}; one of {sorted(config.PRESETS)}"
        )
    if _OUTPUT.value:  # before any work: a path that cannot be written fails now
        experiment.check_output_file(_OUTPUT.value, "--output_json")
    try:
        prompt_ids = [generate.parse_ids(s, "--prompt_ids") for s in _PROMPT_IDS.value]
        stop_ids = None
        if _STOP_IDS.value is not None:
            stop_ids = generate.parse_ids(",".join(_STOP_IDS.value), "--stop_token_ids")
        if _MESH.value:
            sharding.make_mesh(_MESH.value)
    except InputError:
        raise
    except ValueError as e:
        name = "--mesh" if _MESH.value and "mesh" in str(e) else ""
        raise app.UsageError(f"{name}{': ' if name else ''}{e}") from None
    try:
        generate.run_cli(
            checkpoint=_CHECKPOINT.value,
            preset=_PRESET.value,
            prompts=_PROMPT.value,
            prompt_ids=prompt_ids,
            max_new_tokens=_MAX_NEW.value,
            temperature=_TEMPERATURE.value,
            top_k=_TOP_K.value,
            top_p=_TOP_P.value,
            stop=_STOP.value,
            stop_token_ids=stop_ids,
            seed=_SEED.value,
            mesh=_MESH.value,
            dtype=_DTYPE.value,
            output_json=_OUTPUT.value,
            flag_values={h.name: h.value for h in _ALL},
        )
    except InputError:
        raise
    except ValueError as e:  # what the model cannot take (token ids, lengths, a mesh)
        raise InputError(str(e)) from e


if __name__ == "__main__":
    cli.run(main)
