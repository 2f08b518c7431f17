"""Scraping a worker's metrics endpoint, parsed with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Scrape:
    """One scrape of the endpoint."""

    def __init__(self, text: str) -> None:
        self.samples: Samples = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def has(self, name: str) -> bool:
        return any(key[0] == name for key in self.samples)

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
        wanted = set(labels.items())
        return sum(v for (n, lbls), v in self.samples.items() if n == name and wanted <= set(lbls))

    def buckets(self, name: str) -> list[tuple[float, float]]:
        found = [
            (float(dict(lbls)["le"]), v) for (n, lbls), v in self.samples.items() if n == f"{name}_bucket"
        ]
        return sorted(found)


def scrape(port: int) -> Scrape | None:
    """The endpoint on 127.0.0.1:``port`` now, or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return Scrape(response.read().decode())
    except OSError:
        return None
