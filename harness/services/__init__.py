"""One module per service: each renders its config from a template, starts itself and
knows how to tell that it is healthy."""
