"""The simulator: the engine's own scheduler, policies and allocator, a cost model instead of
a model. No JAX imported here.

    trace -> Requests -> simulate(Scheduler, requests, cost, timing)   loop.py
                              |            ^
                              v            | seconds of device work per plan
                         Plan per step   cost model:
                                           LinearCost      hand-set            cost.py
                                           CalibratedCost  the engine's profile.json
                                                           (calibrated.py)
                                           RooflineCost    accelerator x model x tp/pp
                                                           (analytical.py, hardware.py,
                                                           shapes.py)
                         -> SimResult: RequestRecords -> metrics.summarize (served schema)

`run.py` builds whole experiments (a trace per rate, every scheduler) on top of this, for
`experiments.simulate` and the scripts.
"""

from jaxserve.sim.analytical import Parallelism, RooflineCost
from jaxserve.sim.calibrated import CalibratedCost, fit_profile
from jaxserve.sim.cost import LinearCost
from jaxserve.sim.hardware import HARDWARE, Accelerator, get_hardware
from jaxserve.sim.loop import SYNC, SimResult, Timing, simulate
from jaxserve.sim.shapes import MODELS, ModelShape, get_model

__all__ = [
    "HARDWARE",
    "MODELS",
    "SYNC",
    "Accelerator",
    "CalibratedCost",
    "LinearCost",
    "ModelShape",
    "Parallelism",
    "RooflineCost",
    "SimResult",
    "Timing",
    "fit_profile",
    "get_hardware",
    "get_model",
    "simulate",
]
