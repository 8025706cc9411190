"""The `wsm` command: one entry point with a subcommand per process."""
