# Finds every third-party dependency once, so that sub-folders only link targets.
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(MPI REQUIRED COMPONENTS C CXX)
find_package(HDF5 REQUIRED COMPONENTS C CXX)
find_package(nlohmann_json 3.9 REQUIRED)
find_package(simdjson REQUIRED)
find_package(CLI11 REQUIRED)
find_package(OpenSSL REQUIRED COMPONENTS Crypto)
find_package(Boost 1.71 REQUIRED COMPONENTS serialization)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)

# HDF5 as one imported target (FindHDF5 gives variables only on older CMake).
add_library(shardtune_hdf5 INTERFACE)
target_include_directories(shardtune_hdf5 SYSTEM INTERFACE ${HDF5_INCLUDE_DIRS})
target_link_libraries(shardtune_hdf5 INTERFACE ${HDF5_CXX_LIBRARIES} ${HDF5_LIBRARIES})
target_compile_definitions(shardtune_hdf5 INTERFACE ${HDF5_DEFINITIONS})

if(SHARDTUNE_WITH_TORCH)
  find_package(Torch REQUIRED)
  # Torch's own flags (e.g. -D_GLIBCXX_USE_CXX11_ABI) travel with the target.
  add_library(shardtune_torch INTERFACE)
  target_link_libraries(shardtune_torch INTERFACE ${TORCH_LIBRARIES})
  separate_arguments(TORCH_CXX_FLAGS_LIST UNIX_COMMAND "${TORCH_CXX_FLAGS}")
  target_compile_options(shardtune_torch INTERFACE ${TORCH_CXX_FLAGS_LIST})
  # A LibTorch built with CUDA names its CUDA libraries (targets torch_cuda / c10_cuda, TORCH_CUDA_LIBRARIES);
  # Debian's 1.13 is CPU-only (its c10/cuda headers are there, the libraries are not). The NCCL backend then
  # uses LibTorch's current CUDA stream and caching allocator (SHARDTUNE_TORCH_CUDA), else the legacy
  # default stream.
  set(SHARDTUNE_TORCH_CUDA OFF)
  if(TARGET torch_cuda OR TARGET c10_cuda OR TORCH_CUDA_LIBRARIES)
    set(SHARDTUNE_TORCH_CUDA ON)
  endif()
endif()

# CUDA + NCCL backend: AUTO builds it where both are found; a CPU build always works.
set(SHARDTUNE_HAVE_NCCL OFF)
if(NOT SHARDTUNE_WITH_CUDA STREQUAL "OFF")
  find_package(CUDAToolkit QUIET)
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV NCCL_HOME PATH_SUFFIXES include)
  find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ENV NCCL_HOME PATH_SUFFIXES lib lib64)
  # The backend needs non-blocking communicators (NCCL 2.14+).
  set(_nccl_version "")
  if(NCCL_INCLUDE_DIR)
    file(STRINGS "${NCCL_INCLUDE_DIR}/nccl.h" _nccl_defs REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) +[0-9]+")
    foreach(_part MAJOR MINOR PATCH)
      string(REGEX MATCH "NCCL_${_part} +([0-9]+)" _m "${_nccl_defs}")
      set(_nccl_${_part} "${CMAKE_MATCH_1}")
    endforeach()
    set(_nccl_version "${_nccl_MAJOR}.${_nccl_MINOR}.${_nccl_PATCH}")
  endif()
  if(CUDAToolkit_FOUND AND NCCL_INCLUDE_DIR AND NCCL_LIBRARY AND _nccl_version VERSION_GREATER_EQUAL 2.14)
    set(SHARDTUNE_HAVE_NCCL ON)
  elseif(SHARDTUNE_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "SHARDTUNE_WITH_CUDA=ON but the CUDA toolkit or NCCL 2.14+ was not found (CUDA toolkit: "
                        "${CUDAToolkit_FOUND}, nccl.h: ${NCCL_INCLUDE_DIR} (version ${_nccl_version}), libnccl: "
                        "${NCCL_LIBRARY}); set CUDAToolkit_ROOT / NCCL_HOME, or use -DSHARDTUNE_WITH_CUDA=OFF")
  elseif(NCCL_INCLUDE_DIR AND _nccl_version VERSION_LESS 2.14)
    message(STATUS "shardtune: NCCL ${_nccl_version} found, but the NCCL backend needs 2.14 or newer: not built")
  endif()
endif()
message(STATUS "shardtune: LibTorch=${SHARDTUNE_WITH_TORCH} (CUDA: ${SHARDTUNE_TORCH_CUDA}) "
               "NCCL backend=${SHARDTUNE_HAVE_NCCL} ${_nccl_version}")

if(SHARDTUNE_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
