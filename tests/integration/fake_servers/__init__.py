"""Tests of the fake provider servers themselves (tests/fakes), over real HTTP."""
