"""Verification: pure logic, arrays in and findings out (statistics, drift, structure, rules,
the report, fingerprints) and the engine that streams checkpoints through it. Imports
ckptwatch.formats, never the model checks, the worker or the daemon (see [tool.importlinter]).
"""
