"""Reads a Parquet sink's directory as a data-lake reader would (pyarrow).

    parquet_read.py ROOT DISTINCT TIMEOUT

Polls until the committed files hold DISTINCT distinct `seq` values or
TIMEOUT seconds passed, reading every visible file whole each time (a
partial or corrupt file fails the read), then prints a JSON summary.
"""

import json
import os
import sys
import time
from collections import Counter

import pyarrow.dataset as ds
import pyarrow.parquet as pq

root, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])


def scan():
    files, hidden = [], []
    for d, _, names in os.walk(root):
        for n in names:
            rel = os.path.relpath(os.path.join(d, n), root)
            if n.startswith(".") and not n.endswith(".commits"):
                hidden.append(rel)
            elif n.endswith(".parquet"):
                files.append(rel)
    return sorted(files), sorted(hidden)


deadline = time.time() + timeout
while True:
    files, hidden = scan()
    seqs = Counter()
    schema = None
    rows_per_file = []
    for f in files:
        t = pq.read_table(os.path.join(root, f))
        rows_per_file.append(t.num_rows)
        schema = {field.name: str(field.type) for field in t.schema}
        if "seq" in t.column_names:
            seqs.update(t.column("seq").to_pylist())
    if len(seqs) >= want or time.time() > deadline:
        break
    time.sleep(0.2)

summary = {
    "files": files,
    "hidden": hidden,
    "rows": sum(rows_per_file),
    "rows_per_file": rows_per_file,
    "distinct": len(seqs),
    "duplicates": sum(c - 1 for c in seqs.values()),
    "min": min(seqs) if seqs else None,
    "max": max(seqs) if seqs else None,
    "schema": schema,
}
if files and "--hive" in sys.argv:
    # The directories read back as Hive partitions.
    dataset = ds.dataset(root, format="parquet", partitioning="hive")
    summary["hive"] = {f.name: str(f.type) for f in dataset.schema}
    summary["hive_rows"] = dataset.count_rows()
print(json.dumps(summary))
