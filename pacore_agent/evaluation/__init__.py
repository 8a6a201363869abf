"""Evaluation: answers and grading, the code sandbox, benchmark data, the result store, reports, bench."""
