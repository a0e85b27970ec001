"""Framework adapters: a trained model becomes a tensor thread without hand-written glue.

``ob.torch.module``, ``ob.tensorflow.model`` and ``ob.onnx.session`` (loaded lazily, so
``import ooblex`` never imports a framework) share the pre/post-processing in ``base``.
"""
