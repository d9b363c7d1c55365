"""The commands beside LightningCLI's: ``sample``, ``evaluate``, ``export``, ``serve``, and what
``predict`` prints. Each is a module with ``main(argv)`` listed in ``cli.TOOLS``; only
``tinycats.cli`` (and the Modal shell) import them, and no command imports another."""
