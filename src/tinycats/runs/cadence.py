"""How often to checkpoint when preemptions are expected: Young–Daly's interval.

A checkpoint every T seconds costs C/T of the time in stalls (C: what one save stalls training),
and a preemption loses T/2 on average, once every M seconds: T/2M. The sum is smallest at
T = √(2·C·M) (Young 1974, Daly 2006). Torch-free, so the Modal layer can import it.
"""

import math


def young_daly_seconds(save_seconds: float, mean_seconds_between_preemptions: float) -> float:
    """The checkpoint interval that wastes the least time: √(2 × save stall × mean time between
    preemptions)."""
    return math.sqrt(2 * save_seconds * mean_seconds_between_preemptions)
