"""Names the tests a Swift Testing log shows as started but not finished (bin/test uses it when
a run is stopped by its time limit). Usage: python3 unfinished_tests.py LOG"""

import re
import sys
from collections import Counter

started = Counter()
finished = Counter()
with open(sys.argv[1], encoding="utf-8", errors="replace") as log:
    for line in log:
        m = re.match(r'^◇ Test (.+?) started\.', line)
        # (a case of a parameterized test is not counted: the test itself is)
        if m and not m.group(1).startswith("case passing"):
            started[m.group(1)] += 1
            continue
        m = re.search(r'[✔✘⊘] Test (.+?)( with \d+ test cases?)? (passed|failed|skipped)( after [0-9.]+ seconds.*|\.)?$', line)
        if m:
            finished[m.group(1)] += 1
running = [name for name, count in started.items() if count > finished[name] and name != "run"]
for name in running[:40]:
    print(f"  {name[:300]}")
if not running:
    print("  (none: the hang is outside Swift Testing's tests, e.g. XCTest or the runner)")
