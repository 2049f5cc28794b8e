"""Batches (/v1/batches and `llava-serve run-batch`): the line formats and the checks of an input file
(lines.py), one line through the one pipeline at Priority.BATCH (execute.py), and the server's
background runner that claims lines with leases from the state store (runner.py)."""
