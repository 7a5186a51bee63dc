"""Environment providers: local processes (the default) and Docker containers, from the
same topology files. Both sit behind harness.environment.Environment and share their start
order (harness.providers.sequence)."""
