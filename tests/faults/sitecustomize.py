"""Fault injection in a subprocess: put this folder on PYTHONPATH and set GOTHIC_FAULT (see
gothic_faults.py). Python imports `sitecustomize` at start-up, before any gothic code, so the
console scripts run unchanged."""

import os

if os.environ.get("GOTHIC_FAULT"):
    from gothic_faults import patches

    for owner, name, replacement in patches(os.environ["GOTHIC_FAULT"]):
        setattr(owner, name, replacement)
