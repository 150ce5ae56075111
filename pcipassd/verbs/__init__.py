"""One module per verb, each with `run(ctx) -> int` (apply and restore: pcipassd.sequence)."""
