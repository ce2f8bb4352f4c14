"""The one pinned production container, named once (``docker/Dockerfile.gpu`` is held to it by a test).

Versions and where they come from are in ``docs/serving_gpu.md``.
"""

TRITON_RELEASE = "26.10"
TRITON_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3"
CUDA_VERSION = "13.4.3"  # NVIDIA's release notes for 26.10: "based on CUDA 13.4.3.001"
DALI_WHEEL = "nvidia-dali-cuda130"  # the CUDA 13 DALI wheel, if DALI must be pip-installed beside it
