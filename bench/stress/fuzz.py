"""API fuzz: schemathesis cases from the server's own OpenAPI schema, then mutants of valid chat bodies.

The schema is the one FastAPI builds from the app's routes and pydantic models (the server does not
publish it over HTTP, so it is built in this process from `create_app`); schemathesis draws
positive cases (schema-valid, half of those of the generation and counting routes pointed at the
served model so they reach the pipeline) and negative cases (schema-invalid) for every route.
Then `mutators.chat_mutant` fills the count. With `per_operation`, every operation gets that many
schemathesis cases instead of a share of the count (so each route's figure means something), and
the summary counts statuses per route. Every answer must be < 500, every error must have
the shape of server/errors.py for its route's API (OpenAI's, Anthropic's on /v1/messages), no
request may hang, and the idle gauges must read 0 afterwards.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter
from typing import Any

import httpx

from bench.stress.mutators import chat_mutant
from bench.stress.server import MODEL_NAME, Server, error_shape_problem
from server.endpoints import COUNTING, GENERATION

REQUEST_TIMEOUT_S = 120.0


class Tally:
    """Statuses and violations of one part; keeps the first few examples of each violation."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.sources: Counter[str] = Counter()
        self.violations: Counter[str] = Counter()
        self.examples: list[dict] = []
        self.routes: dict[str, Counter[int]] = {}

    def record(
        self,
        source: str,
        status: int,
        body: bytes,
        request: bytes | str = b"",
        path: str = "",
        route: str = "",
    ) -> None:
        self.sources[source] += 1
        self.statuses[status] += 1
        self.routes.setdefault(route or "POST /v1/chat/completions", Counter())[status] += 1
        problem = None
        if status >= 500 or status == 0:
            problem = "5xx" if status else "no answer"
        elif status >= 400:
            shape = error_shape_problem(status, body, path)
            problem = f"error shape: {shape}" if shape else None
        if problem:
            self.violate(
                problem,
                source=source,
                status=status,
                response=body[:300].decode("utf-8", "replace"),
                request=request[:300]
                if isinstance(request, str)
                else request[:300].decode("utf-8", "replace"),
            )

    def violate(self, kind: str, **example: Any) -> None:
        self.violations[kind] += 1
        if len(self.examples) < 30:
            self.examples.append({"kind": kind, **example})

    @property
    def num_cases(self) -> int:
        return sum(self.statuses.values())

    def summary(self) -> dict:
        return {
            "cases": self.num_cases,
            "by_source": dict(self.sources),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "num_5xx": sum(v for k, v in self.statuses.items() if k >= 500),
            "violations": dict(self.violations),
            "by_route": {
                route: {"cases": sum(c.values()), **{str(k): v for k, v in sorted(c.items())}}
                for route, c in sorted(self.routes.items())
            },
            "examples": self.examples,
        }


def schema_cases(server: Server, count: int, seed: int, tally: Tally, per_operation: int = 0) -> None:
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    from server.app import create_app
    from server.config import ServerConfig

    raw = create_app(ServerConfig(model="unused", served_model_name=MODEL_NAME)).openapi()
    schema = schemathesis.openapi.from_dict(raw)
    operations = [result.ok() for result in schema.get_all_operations()]
    chat_share = 0.8
    others = [op for op in operations if op.path != "/v1/chat/completions"]
    rng = random.Random(seed)
    for op in operations:
        share = chat_share if op.path == "/v1/chat/completions" else (1 - chat_share) / max(1, len(others))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            route = f"{op.method.upper()} {op.path}"
            send = _sender(server, tally, rng, f"schemathesis {mode.value} {route}", op.path, route)
            examples = max(1, per_operation // 2 if per_operation else int(count * share / 2))
            test = given(op.as_strategy(generation_mode=mode))(send)
            test = settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )(test)
            with contextlib.suppress(Unsatisfiable):  # e.g. no invalid request exists for GET /health
                hypothesis.seed(seed)(test)()


def _sender(server: Server, tally: Tally, rng: random.Random, source: str, path: str, route: str):
    is_generation = path in GENERATION or path in COUNTING

    def send(case) -> None:
        if is_generation and isinstance(case.body, dict) and rng.random() < 0.5:
            case.body["model"] = MODEL_NAME  # past the model check, into validation and the engine
        try:
            response = case.call(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S)
            status, content = response.status_code, response.content
        except Exception as e:  # a hang or a dropped connection is a finding, not a crash of the harness
            status, content = 0, repr(e).encode()
        tally.record(source, status, content, repr(case.body)[:300], path, route)

    return send


def mutant_cases(server: Server, count: int, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S) as client:
        for _ in range(count):
            name, body = chat_mutant(rng, MODEL_NAME)
            try:
                response = client.post(
                    "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
                )
                status, content = response.status_code, response.content
            except httpx.HTTPError as e:
                status, content = 0, repr(e).encode()
            tally.record(f"mutant {name}", status, content, body)


def run(server: Server, count: int, seed: int = 0, schema_share: float = 0.3, per_operation: int = 0) -> dict:
    """`count` cases in all: about `schema_share` of them from schemathesis, the rest mutants (every
    operation and mode gets one schemathesis case at least, so a small `count` can be exceeded).

    `per_operation` > 0: that many schemathesis cases for every operation (half positive, half
    negative) instead of the share; mutants then fill whatever is left of `count`.
    """
    tally = Tally()
    started = time.monotonic()
    schema_cases(server, int(count * schema_share), seed, tally, per_operation)
    mutant_cases(server, max(0, count - tally.num_cases), seed, tally)
    gauges = server.idle_gauges()
    if any(gauges.values()):
        tally.violate("leak", gauges=gauges)
    return {
        **tally.summary(),
        "idle_gauges": gauges,
        "seconds": round(time.monotonic() - started, 1),
        "passed": not tally.violations,
    }
