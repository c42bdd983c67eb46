"""dinov3_ros.runtime: preprocessing, one Engine over torch / onnxruntime / TensorRT, export, checker, bench.

- ``preprocess``: ``Preprocessor`` (resize keeping aspect, pad/crop to the patch grid, normalise; GPU when
  the engine is) and ``Geometry`` (network <-> input pixels, patch centres, intrinsics scaling).
- ``engine``: ``Engine`` / ``EngineInfo`` / ``create_engine(backend, ...)``.
- ``torch_backend`` / ``ort_backend`` / ``trt_backend``: the backends.
- ``vit_infer`` + ``graph``: the deployable forward (cached fp32 RoPE, folded LayerScale) + heads.
- ``export`` (``dinov3-ros export``), ``onnx_check`` (TensorRT compatibility), ``bench`` (``dinov3-ros bench``).

Submodules are imported on use so ``import dinov3_ros.runtime`` stays light.
"""
