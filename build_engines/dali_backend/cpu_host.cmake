# Included after every project() of the dali backend's build (CMAKE_PROJECT_INCLUDE), for a CPU-only build.
#
# With TRITON_ENABLE_GPU=OFF the backend's CMake skips find_package(CUDAToolkit), yet its dali_executor
# library still links CUDA::cudart and its sources include cuda_runtime_api.h (through DALI's headers).
# No CUDA toolkit is installed on a CPU host, so the target is declared here from PyPI's pieces:
# libcudart.so.12 and the runtime headers (nvidia-cuda-runtime-cu12, already in the environment), crt/*.h
# (nvidia-cuda-nvcc-cu12, headers only) and nvtx3/ (nvidia-nvtx-cu12). The paths come from the build
# script (build_engines/dali_backend/build.py) as TIMESFORMER_CUDART_LIBRARY and
# TIMESFORMER_CUDA_INCLUDE_DIRS.

if(NOT TARGET CUDA::cudart)
  if(NOT TIMESFORMER_CUDART_LIBRARY OR NOT EXISTS "${TIMESFORMER_CUDART_LIBRARY}")
    message(FATAL_ERROR "TIMESFORMER_CUDART_LIBRARY must name libcudart.so.12 (got '${TIMESFORMER_CUDART_LIBRARY}')")
  endif()
  add_library(CUDA::cudart SHARED IMPORTED GLOBAL)
  set_target_properties(CUDA::cudart PROPERTIES
    IMPORTED_LOCATION "${TIMESFORMER_CUDART_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${TIMESFORMER_CUDA_INCLUDE_DIRS}")
endif()
