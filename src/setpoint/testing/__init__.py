"""Tools for testing agents and drivers against an unreliable world (see faultproxy.py)."""
