"""Example DAGs shipped with Tradewind; `tradewind standalone` loads them unless told otherwise."""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
