"""Developer and load-test tooling (not part of the deployed services)."""
