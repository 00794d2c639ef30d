"""One trial: a configuration run for a few steps and checked at every step."""
