"""The job domain: pure values and rules, no I/O (status, values, validation, questions)."""
