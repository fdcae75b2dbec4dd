"""Equivalence as a feature: random programs, differential checks, `convdsl verify`.

    strategies.py    hypothesis strategies: random well-typed CDL programs (text) and inputs
    programs.py      the program generator (statements, blocks, twins), driven by a Draw
    steps.py         one-input pipe stages with their shape rules and equivalent spellings
    draws.py         where choices come from: hypothesis (shrinks) or random.Random(seed)
    inputs.py        seeded inputs, edge cases first (zeros, ones, large, negative, ...)
    differential.py  run a graph on backends/passes and compare with torch eager
    properties.py    the properties as plain functions of one Case (tests and replay)
    regressions.py   failing programs saved as .cdl and read back
    report.py        the rich table of `convdsl verify`
    campaign.py      long random runs that keep going after failures (python -m convdsl.verify.campaign)

Importing this package imports neither torch nor hypothesis.
"""
