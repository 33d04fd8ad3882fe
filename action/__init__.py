"""The GitHub Action entry point. `action.yml` drives the CLI for now; this package takes over when the
Action's issue lands, calling the same pipeline and gate as the App."""
