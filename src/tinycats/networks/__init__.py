"""The networks and the maths they train with, in plain PyTorch (no Lightning): the TinyDiT,
the rectified-flow loss and samplers, batched augmentation and per-step random generators."""
