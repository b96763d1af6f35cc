"""Least-privilege IAM policies of the package: templates in this folder, rendered per use case.

See ``render.py`` and the README section "IAM policies".
"""
