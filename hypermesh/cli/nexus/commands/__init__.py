"""One module per nexus command, each with `run(args, session) -> int`, imported only when run."""
