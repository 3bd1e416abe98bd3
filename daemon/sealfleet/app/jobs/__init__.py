"""Mutations as journaled jobs: :mod:`runner` journals, runs and resumes them; one
executor module per kind of job says what its steps are and how each is done."""
