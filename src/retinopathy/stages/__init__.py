"""One module (or package) per command: each parses its arguments and calls library modules.

A stage module never imports another stage module, so dvc.yaml's code deps,
which follow the imports, rerun a stage only when code it really runs changed.
"""
