"""Cluster mode: network brokers, a signed model registry, workers, deploys and ``ob.process``.

``ob.deploy`` / ``ob.undeploy`` / ``ob.process`` live here; see docs/cluster.md. The package is also
``ob.cluster``, the function: ``ob.cluster()`` starts or joins the cluster to deploy to
(``current.cluster``). Python makes a subpackage an attribute of its parent once it is imported,
so ``ooblex.cluster`` is callable rather than shadowed by (or shadowing) a function of that name.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .current import cluster

        return cluster(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
