"""`interest bench {ingest,inference,recommend,model,profiles,learner,http,quality}`: benchmarks that print one JSON object."""

from __future__ import annotations

import importlib
import importlib.util
import sys

BENCHES = {
    "ingest": "interest.tools.bench_ingest",
    "inference": "interest.tools.bench_inference",
    "recommend": "interest.tools.bench_recommend",
    "model": "interest.tools.bench_model",
    "profiles": "interest.tools.bench_profiles",
    "learner": "interest.tools.bench_learner",
    "http": "interest.tools.bench_http",
    "quality": "interest.tools.bench_quality",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHES or importlib.util.find_spec(BENCHES[argv[0]]) is None:
        names = [n for n, m in BENCHES.items() if importlib.util.find_spec(m) is not None]
        print(f"usage: interest bench {{{','.join(names)}}} [options]", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHES[argv[0]]).main(argv[1:]) or 0
