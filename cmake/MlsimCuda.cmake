# Decide whether the CUDA kernels are built. Sets MLSIM_WITH_CUDA and, when ON, the interface
# target mlsim_cuda_deps and MLSIM_CUDART_LIB_DIR (the CUDA runtime's folder, or empty). The CUDA
# compiler must match torch's CUDA major version: kernels built by nvcc 13 against a CUDA 12 torch
# load but fail at launch, which is worse than not building them.
set(MLSIM_WITH_CUDA OFF)
# Developer escape hatch: compile-check the .cu files with whatever nvcc exists (the result is not
# expected to run against torch's CUDA runtime); never set it for a build that is used.
option(MLSIM_CUDA_ALLOW_MISMATCH "Accept an nvcc whose major version differs from torch's (compile check only)" OFF)
set(_why "")
if(MLSIM_CUDA STREQUAL "OFF")
  set(_why "MLSIM_CUDA=OFF")
elseif(TORCH_CUDA_VERSION STREQUAL "none")
  set(_why "torch is a CPU-only build")
else()
  string(REGEX MATCH "^[0-9]+" _torch_cuda_major "${TORCH_CUDA_VERSION}")
  # Candidates: $CUDACXX, the registry's nvidia-cuda-nvcc-cu<major> package, then nvcc on PATH.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import os, nvidia.cuda_nvcc as m; print(os.path.join(list(m.__path__)[0], 'bin', 'nvcc'))"
    OUTPUT_VARIABLE _pip_nvcc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  set(_candidates "$ENV{CUDACXX}" "${_pip_nvcc}")
  find_program(_path_nvcc nvcc PATHS /usr/local/cuda/bin)
  if(_path_nvcc)
    list(APPEND _candidates "${_path_nvcc}")
  endif()
  set(_seen "")
  foreach(_nvcc IN LISTS _candidates)
    if(NOT _nvcc OR NOT EXISTS "${_nvcc}")
      continue()
    endif()
    execute_process(COMMAND "${_nvcc}" --version OUTPUT_VARIABLE _out ERROR_QUIET)
    string(REGEX MATCH "release ([0-9]+)\\.([0-9]+)" _m "${_out}")
    set(_major "${CMAKE_MATCH_1}")
    list(APPEND _seen "${_nvcc} (CUDA ${CMAKE_MATCH_1}.${CMAKE_MATCH_2})")
    if(_major STREQUAL _torch_cuda_major OR MLSIM_CUDA_ALLOW_MISMATCH)
      set(CMAKE_CUDA_COMPILER "${_nvcc}")
      set(MLSIM_WITH_CUDA ON)
      break()
    endif()
  endforeach()
  if(NOT MLSIM_WITH_CUDA)
    if(_seen)
      # Commas, not semicolons: the text becomes a C string and ';' would split it as a CMake list.
      string(JOIN ", " _seen_text ${_seen})
      set(_why "no nvcc matches torch's CUDA ${TORCH_CUDA_VERSION}, found ${_seen_text}")
    else()
      set(_why "no nvcc found")
    endif()
  endif()
endif()

if(MLSIM_WITH_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    # Volta to Hopper; PTX of the last one lets newer GPUs JIT.
    set(CMAKE_CUDA_ARCHITECTURES 70-real 80-real 86-real 89-real 90)
  endif()
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 17)
  # The CUDA runtime headers and library come from the nvidia-* wheels torch depends on.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import os, nvidia.cuda_runtime as m; print(list(m.__path__)[0])"
    OUTPUT_VARIABLE _cudart_dir OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  add_library(mlsim_cuda_deps INTERFACE)
  set(MLSIM_CUDART_LIB_DIR "")
  if(_cudart_dir)
    set(MLSIM_CUDART_LIB_DIR "${_cudart_dir}/lib")
    target_include_directories(mlsim_cuda_deps SYSTEM INTERFACE "${_cudart_dir}/include")
    file(GLOB _cudart_lib "${_cudart_dir}/lib/libcudart.so*")
    list(GET _cudart_lib 0 _cudart_lib)
    target_link_libraries(mlsim_cuda_deps INTERFACE "${_cudart_lib}")
  endif()
  target_link_libraries(mlsim_cuda_deps INTERFACE
    "${TORCH_DIR}/lib/libc10_cuda.so" "${TORCH_DIR}/lib/libtorch_cuda.so")
  set(MLSIM_BUILD_INFO "CUDA kernels built with ${CMAKE_CUDA_COMPILER}")
  if(MLSIM_CUDA_ALLOW_MISMATCH)
    set(MLSIM_BUILD_INFO "${MLSIM_BUILD_INFO} (MLSIM_CUDA_ALLOW_MISMATCH: compile check only)")
  endif()
  message(STATUS "mlsim: ${MLSIM_BUILD_INFO}")
else()
  if(MLSIM_CUDA STREQUAL "ON")
    message(FATAL_ERROR "mlsim: MLSIM_CUDA=ON but ${_why}")
  endif()
  set(MLSIM_BUILD_INFO "CPU-only build (${_why})")
  message(STATUS "mlsim: ${MLSIM_BUILD_INFO}")
endif()
