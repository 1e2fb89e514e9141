# The README's two commands. Both install what is missing first (idempotent).
.PHONY: setup demo test

setup:
	bash .ci/setup.sh

# End to end on the built-in synthetic data (what exists of the pipeline so far).
demo: setup
	.venv/bin/pointad render scan --dataset synthetic
	.venv/bin/pointad render scan --dataset synthetic-eyecandies
	.venv/bin/pointad render scan --dataset synthetic-real3d

# pytest exits 5 when it collects no test: a broken checkout, so a failure here too.
test: setup
	.venv/bin/python -m pytest -q
