#!/usr/bin/env python3
"""Summarise a CSV file of measurements: count, mean and max per sensor."""

import argparse
import csv
from collections import defaultdict


def summarise(path):
    totals = defaultdict(float)
    counts = defaultdict(int)
    peaks = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            sensor = row["sensor"]
            value = float(row["value"])
            totals[sensor] += value
            counts[sensor] += 1
            peaks[sensor] = max(peaks.get(sensor, value), value)
    return {
        s: {"count": counts[s], "mean": totals[s] / counts[s], "max": peaks[s]}
        for s in sorted(counts)
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", help="the CSV file")
    args = parser.parse_args()
    for sensor, stats in summarise(args.path).items():
        print(f"{sensor}: {stats['count']} readings, mean {stats['mean']:.2f}, max {stats['max']}")


if __name__ == "__main__":
    main()
