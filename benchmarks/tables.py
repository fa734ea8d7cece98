"""Print the Markdown table of benchmark result files (for the README), with each file's protocol and command.

    python benchmarks/tables.py benchmarks/results/ml-1m_ctr_baselines.json auc gauc logloss
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reaseq.evaluate.results import markdown_table


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    record = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    print(markdown_table(record, sys.argv[2:]))
    print(f"\nSeeds {record['seeds']}; {record['date'][:10]}; command: `{record['command']}`")


if __name__ == "__main__":
    main()
