"""Orchestration and the CLI of compleak-harness: config, data, build, collect, attack stage, report."""
