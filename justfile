# compleak-harness recipes (the `just` binary comes from PyPI as rust-just, installed by the test extra)
py := ".venv/bin/python"

setup:
    bash scripts/setup.sh --test

demo:
    .venv/bin/compleak demo

test *ARGS:
    {{py}} -m pytest -q {{ARGS}}

bench: bench-attacks bench-build bench-collect

bench-attacks:
    {{py}} benchmarks/attacks.py

bench-build:
    {{py}} benchmarks/build.py

bench-collect:
    {{py}} benchmarks/collect.py
