"""Typed errors for bad input: what a user gave (a file, a flag, a field) is wrong.

    InputError(ValueError)        anything a user can fix by changing what they passed
      CheckpointError             a model / KV prediction / training checkpoint cannot be read
      RunSettingsError            a workdir holds a run made with other settings
    (jaxserve.workload.WorkloadError is an InputError too.)

Each message names the culprit (path, flag or field) and what is wrong, on one line, so a
command line can print it as is (`jaxserve.cli.run`) instead of a traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input a user can fix: the message names the file, flag or field."""


class CheckpointError(InputError):
    """A checkpoint directory exists but cannot be read (damaged, incomplete, unsupported)."""


class RunSettingsError(InputError):
    """A workdir was made by a run with different settings (resume would mix two runs)."""
