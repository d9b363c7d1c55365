"""Measuring the generator: FID and KID (``generator_metrics``) and the memorisation check
(``memorisation``), used by ``tinycats evaluate``."""
