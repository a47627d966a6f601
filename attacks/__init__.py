"""Adversaries that measure what still leaks.

Each attack consumes only a frozen *view* that the threat model grants (the
server's transcript, a colluder's state, a released model) and reports a leakage
metric. This package may import :mod:`secrelay` and :mod:`protocols`, never the
other way round.
"""
