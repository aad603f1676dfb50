from __future__ import annotations


def wpath(namespace: str, name: str = "", sub: str = "") -> str:
    path = f"/apis/example.com/v1/namespaces/{namespace}/widgets"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path
