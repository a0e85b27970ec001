"""Cluster mode: network brokers, a signed model registry, workers, deploys and ``ob.process``.

``ob.deploy`` / ``ob.undeploy`` / ``ob.process`` live here; see docs/cluster.md.
"""
