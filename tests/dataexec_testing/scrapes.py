"""Reading GET /metrics in tests: every sample of a scrape, by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from dataexec_testing.api import OPERATOR_TOKEN, RunningServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when it is not there yet (a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(api: RunningServer) -> Samples:
    async with api.client(token=OPERATOR_TOKEN) as operator:
        answer = await operator.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    return parse(answer.text)
