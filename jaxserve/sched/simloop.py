"""The simulator's loop and linear cost model, where the scheduler's tests and scripts find
them. The simulator lives in `jaxserve.sim`; this module re-exports its loop (with the
synchronous timing by default: every step read before the next is planned, no host cost) and
`LinearCost`, so a schedule worked out by hand in a test is simulated exactly.
"""

from jaxserve.sim.cost import LinearCost
from jaxserve.sim.loop import SYNC, SimResult, Timing, simulate

__all__ = ["SYNC", "LinearCost", "SimResult", "Timing", "simulate"]
