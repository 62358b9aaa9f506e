"""One module per CLI subcommand (see shiftkit.cli). Commands parse arguments and call the Python API."""
