"""Parses Prometheus text exposition from stdin with prometheus_client's parser.

Prints one JSON line per sample: {"name", "labels", "value"}; exits non-zero (with the
parser's message) if the text does not parse.
"""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            print(json.dumps({"family": family.name, "type": family.type, "name": sample.name,
                              "labels": sample.labels, "value": sample.value}, sort_keys=True))


if __name__ == "__main__":
    main()
