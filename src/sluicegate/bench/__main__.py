"""`python -m sluicegate.bench`: the bench without the rest of the CLI."""

from sluicegate.bench.cli import main

raise SystemExit(main())
