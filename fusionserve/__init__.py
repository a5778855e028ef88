"""fusionserve: the command line and the process supervisor that runs everything on one host."""

__version__ = "0.1.0"
