"""Measuring the models: the classifier's report (``report``), FID and KID of the generator
(``generator_metrics``) and its memorisation check (``memorisation``).

The modules are imported one by one, not from here: the classifier imports ``report`` while
``tinycats.models`` is still loading, and the generator's modules import that package.
"""
