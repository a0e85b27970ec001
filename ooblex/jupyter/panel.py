"""What the JupyterLab panel asks a notebook's kernel: which tensor threads it defines, and to deploy one.

The panel evaluates ``threads(globals())`` or ``deploy(globals(), "name")`` as a user expression
(no cell, no history); the answers are JSON (``_repr_json_``). Deploying runs ``ob.deploy`` in the
kernel, so a thread defined in a cell travels by value like any notebook deploy, to the cluster
and with the secret the kernel's environment names (``OOBLEX_CLUSTER``/``OOBLEX_BROKER``,
``OOBLEX_SECRET``: the Jupyter server's, which kernels inherit).
"""

from __future__ import annotations

from typing import Any

from ..thread import TensorThread


class Answer:
    """A JSON answer for the panel (IPython shows it as ``application/json``)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def _repr_json_(self) -> Any:
        return self.data


def threads(namespace: dict[str, Any]) -> Answer:
    """The notebook's tensor threads: ``[{"variable", "name", "description"}]``, by variable name."""
    return Answer([{"variable": var, "name": t.name, "description": t.description}
                   for var, t in sorted(namespace.items())
                   if isinstance(t, TensorThread) and not var.startswith("_")])


def deploy(namespace: dict[str, Any], variable: str, **options: Any) -> Answer:
    """``ob.deploy`` the tensor thread in ``variable``: ``{"name", "version"}``, or ``{"error"}`` saying why not."""
    from ..cluster.deploy import deploy as ob_deploy

    thread = namespace.get(variable)
    if not isinstance(thread, TensorThread):
        return Answer({"error": f"{variable!r} is not a tensor thread in this notebook (run its cell first)"})
    try:
        dep = ob_deploy(thread, **options)
    except Exception as exc:  # noqa: BLE001 - the panel shows the reason, the kernel goes on
        return Answer({"error": f"{type(exc).__name__}: {exc}"})
    return Answer({"name": dep.name, "version": dep.version})
