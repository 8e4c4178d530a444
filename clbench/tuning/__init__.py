"""`clbench tune`: an equal-budget hyper-parameter search per method, chosen on validation data only.

`space` collects what may vary (the search spaces declared beside the options), `search` runs the Optuna
studies and writes `tuned.yaml`, `summary` writes `tuning.md` and its plot. docs/tuning.md has the protocol.
"""
