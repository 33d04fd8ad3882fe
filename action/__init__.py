"""The GitHub Action: `python -m action` runs the App's pipeline and gate for one workflow step.

Modules: `inputs` (INPUT_* variables), `context` (GITHUB_* variables and the event), `workspace` (the
checkout's git), `token_client` (the App's GitHub adapter for a workflow token),
`commands` (workflow commands and the Actions files), `log` (what the step prints), `run` (the run).
"""
