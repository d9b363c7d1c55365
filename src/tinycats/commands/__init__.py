"""The commands beside LightningCLI's: ``sample``, ``evaluate``, ``export``, and what
``predict`` prints. Only ``tinycats.cli`` (and the Modal shell) import them; no command imports
another."""
