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
endif()

# CUDA + NCCL backend: AUTO builds it where both are found; a CPU build always works.
set(SHARDTUNE_HAVE_NCCL OFF)
if(NOT SHARDTUNE_WITH_CUDA STREQUAL "OFF")
  find_package(CUDAToolkit QUIET)
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV NCCL_HOME PATH_SUFFIXES include)
  find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ENV NCCL_HOME PATH_SUFFIXES lib lib64)
  if(CUDAToolkit_FOUND AND NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    set(SHARDTUNE_HAVE_NCCL ON)
  elseif(SHARDTUNE_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "SHARDTUNE_WITH_CUDA=ON but CUDA toolkit or NCCL was not found "
                        "(set CUDAToolkit_ROOT / NCCL_HOME, or use -DSHARDTUNE_WITH_CUDA=OFF)")
  endif()
endif()
message(STATUS "shardtune: LibTorch=${SHARDTUNE_WITH_TORCH} NCCL backend=${SHARDTUNE_HAVE_NCCL}")

if(SHARDTUNE_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
