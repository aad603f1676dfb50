"""Names for the shapes every layer passes around, declared once."""

from __future__ import annotations

from typing import Any

Object = dict[str, Any]
"""An API object as JSON decodes it: apiVersion, kind, metadata, spec, status."""
