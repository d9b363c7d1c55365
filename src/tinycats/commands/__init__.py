"""The commands beside LightningCLI's, each a module with ``main(argv)`` listed in ``cli.TOOLS``."""
