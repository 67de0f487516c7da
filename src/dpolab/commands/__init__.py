"""Sub-commands of the `dpolab` command line, one module per command group."""
