"""The test suite, a package so its shared helpers (equivalence.py, export_utils.py, pretrain_utils.py)
import as ``tests.<module>`` with no sys.path edits (pytest puts the repository root on the path)."""
