"""Environment providers: local processes (the default) and, later, Docker containers.
Both sit behind harness.environment.Environment."""
